"""Generate data/notes.jsonl, the example data set mlxtune ships.

Run ``python data/make_notes.py`` to rewrite ``data/notes.jsonl`` (the seed is
fixed, so the file comes out byte for byte the same).

The task: turn messy meeting jottings into tidy notes in one house format.
It is chosen so that a few minutes of LoRA on a small model shows a visible
change: before training SmolLM2-135M-Instruct answers in its own free style;
after, it writes the heading, the bold sections, the checkbox action items and
the expanded abbreviations below. The vocabularies are wide enough (names,
projects, verbs, meeting kinds, dates) that a held-out split measures whether
the model learned the format rather than the records.

User turn: an instruction line, then lowercase shorthand jottings in random
order. Assistant turn, always::

    ## <Meeting kind> — <Weekday day Month>
    Attendees: <Names>            (when the jottings list them)
    **Decisions**
    - <full sentence>
    **Action items**
    - [ ] <Name>: <task> (due <Day>)
    **Open questions**
    - <full question>

with ``_None_`` under a section that has no items. Items keep the order in
which they appear in the jottings. All content is original to this script
(Apache-2.0, like the rest of mlxtune).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

SEED = 20250101
N_RECORDS = 300
# Longest record (user + assistant characters). Keeps every record near 100-250
# SmolLM2 tokens, and under 512 tokens even for a nearly byte-level tokenizer
# such as the tests' tiny one.
MAX_CHARS = 600
OUT = Path(__file__).resolve().parent / "notes.jsonl"

INSTRUCTIONS = [
    "Tidy up these notes:",
    "Clean these up please:",
    "Can you turn my meeting jottings into proper notes?",
    "Format these meeting notes:",
    "Write these up properly:",
    "Make these notes readable:",
    "Notes from today, please tidy:",
    "Turn this into clean meeting notes:",
    "Please format:",
    "Clean up my scribbles from the meeting:",
    "Rough notes below, can you tidy them?",
    "Write up the meeting from these jottings:",
    "tidy pls",
    "Could you clean up these meeting notes for me?",
    "Here are my raw notes. Make them presentable:",
    "Please turn these into our usual meeting notes:",
]

NAMES = [
    "alice", "bob", "carmen", "dev", "priya", "tomas", "yuki", "omar", "lena", "marco",
    "sofia", "kwame", "ines", "raj", "mei", "jonas", "fatima", "luca", "nina", "owen",
    "zara", "hugo", "amara", "felix", "ana", "sam", "leo", "maya", "ravi", "elena",
    "theo", "chloe", "ben", "aisha", "diego", "hana", "ivan", "grace", "malik", "rosa",
    "pablo", "ingrid", "kofi", "lucy", "arjun", "greta", "noah", "selin",
]  # fmt: skip

# (jotting, tidy) pairs: the jotting as someone types it, the tidy form.
PROJECTS = [
    ("atlas", "Atlas"), ("billing v2", "Billing v2"), ("the mobile app", "the mobile app"),
    ("onboarding", "the onboarding flow"), ("search", "search"), ("data pipeline", "the data pipeline"),
    ("helpdesk", "the helpdesk"), ("q3 roadmap", "the Q3 roadmap"), ("website redesign", "the website redesign"),
    ("api gateway", "the API gateway"), ("orion", "Orion"), ("payments", "payments"),
    ("the crm migration", "the CRM migration"), ("pricing page", "the pricing page"),
    ("analytics dashboard", "the analytics dashboard"), ("kestrel", "Kestrel"),
    ("partner portal", "the partner portal"), ("ios release", "the iOS release"),
    ("sso rollout", "the SSO rollout"), ("nightly jobs", "the nightly jobs"),
]  # fmt: skip
FEATURES = [
    ("dark mode", "dark mode"), ("csv export", "CSV export"), ("sso login", "SSO login"),
    ("the legacy api", "the legacy API"), ("push notifs", "push notifications"),
    ("the beta flag", "the beta flag"), ("bulk edit", "bulk editing"), ("the old ui", "the old UI"),
    ("offline mode", "offline mode"), ("2fa", "two-factor login"), ("pdf invoices", "PDF invoices"),
]  # fmt: skip
DOCS = [
    ("the spec", "the spec"), ("q3 budget", "the Q3 budget"), ("the slides", "the slides"),
    ("release notes", "the release notes"), ("the postmortem", "the postmortem"),
    ("contract draft", "the contract draft"), ("test plan", "the test plan"),
    ("the faq", "the FAQ"), ("hiring plan", "the hiring plan"), ("the rfc", "the RFC"),
    ("survey results", "the survey results"), ("launch checklist", "the launch checklist"),
]  # fmt: skip
BUGS = [
    ("the login bug", "the login bug"), ("flaky tests", "the flaky tests"),
    ("the mem leak", "the memory leak"), ("tz bug", "the time zone bug"),
    ("slow dashboards", "the slow dashboards"), ("the db timeouts", "the database timeouts"),
    ("broken emails", "the broken emails"), ("the 500s on checkout", "the 500 errors on checkout"),
]  # fmt: skip
OPTIONS = [
    ("postgres", "Postgres"), ("the vendor option", "the vendor option"), ("option b", "option B"),
    ("weekly releases", "weekly releases"), ("a feature flag", "a feature flag"),
    ("the cheaper plan", "the cheaper plan"), ("in-house build", "an in-house build"),
]  # fmt: skip
TOPICS = [
    ("pricing", "pricing"), ("the offsite", "the offsite"), ("on-call rota", "the on-call rota"),
    ("vendor contract", "the vendor contract"), ("the roadmap", "the roadmap"),
    ("access rights", "access rights"), ("the demo script", "the demo script"),
]  # fmt: skip
ROLES = [
    ("designer", "designer"), ("backend dev", "backend developer"), ("data analyst", "data analyst"),
    ("qa eng", "QA engineer"), ("pm", "product manager"), ("support agent", "support agent"),
]  # fmt: skip
THINGS = [
    ("the staging server", "the staging server"), ("the design system", "the design system"),
    ("the old dashboard", "the old dashboard"), ("the test budget", "the test budget"),
    ("the shared inbox", "the shared inbox"), ("ci", "CI"), ("the style guide", "the style guide"),
]  # fmt: skip
MEETINGS = [
    ("weekly sync", "Weekly sync"), ("standup", "Standup"), ("sprint planning", "Sprint planning"),
    ("design review", "Design review"), ("retro", "Retro"), ("1:1", "1:1"),
    ("kickoff", "Project kickoff"), ("budget review", "Budget review"),
    ("incident review", "Incident review"), ("roadmap review", "Roadmap review"),
    ("hiring sync", "Hiring sync"), ("eng mtg", "Engineering meeting"), ("all hands prep", "All-hands prep"),
]  # fmt: skip

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORKDAYS = [("mon", "Mon"), ("tue", "Tue"), ("wed", "Wed"), ("thu", "Thu"), ("fri", "Fri")]
WORKDAYS_LONG = dict(zip(["mon", "tue", "wed", "thu", "fri"], WEEKDAYS[:5]))
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
TIMES = [("10am", "10:00"), ("2pm", "14:00"), ("9:30", "9:30"), ("4pm", "16:00"), ("11am", "11:00")]
AMOUNTS = [("5k", "5,000 euros"), ("12k", "12,000 euros"), ("2.5k", "2,500 euros"), ("40k", "40,000 euros")]
QUARTERS = [("q1", "Q1"), ("q2", "Q2"), ("q3", "Q3"), ("q4", "Q4")]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class Slots:
    """Random fillers for one item: each attribute is a (jotting, tidy) pair."""

    def __init__(self, rng: random.Random, names: list[str]):
        n1, n2 = rng.sample(names, 2)
        self.name = (n1, cap(n1))
        self.name2 = (n2, cap(n2))
        self.proj = rng.choice(PROJECTS)
        self.feature = rng.choice(FEATURES)
        self.doc = rng.choice(DOCS)
        self.bug = rng.choice(BUGS)
        self.option = rng.choice(OPTIONS)
        self.topic = rng.choice(TOPICS)
        self.role = rng.choice(ROLES)
        self.thing = rng.choice(THINGS)
        self.time = rng.choice(TIMES)
        self.amount = rng.choice(AMOUNTS)
        self.quarter = rng.choice(QUARTERS)
        month = rng.choice(MONTHS)
        self.month = (month[:3].lower(), month)
        day = rng.choice(WORKDAYS)
        self.day = day  # ("fri", "Fri") for due dates
        self.dayname = (day[0], WORKDAYS_LONG[day[0]])  # ("fri", "Friday") in sentences

    def fill(self, template: str, tidy: bool) -> str:
        values = {k: v[1 if tidy else 0] for k, v in vars(self).items()}
        values.update({f"{k}_c": cap(v) for k, v in values.items()})
        return template.format(**values)


# (jotting, tidy) templates. Jottings are lowercase shorthand; tidy forms are full sentences.
DECISIONS = [
    ("decided: {proj} launch moves to {dayname}", "The launch of {proj} moves to {dayname}."),
    ("agreed w/ {name} to drop {feature} from {proj}", "Agreed with {name} to drop {feature} from {proj}."),
    ("going w/ {option} for {proj}", "We are going with {option} for {proj}."),
    ("dec: freeze {proj} scope b4 {dayname}", "The scope of {proj} is frozen before {dayname}."),
    ("budget for {proj} approved ({amount})", "The budget for {proj} is approved at {amount}."),
    ("no new features until {proj} ships", "No new features until {proj} ships."),
    ("decided {name} owns {proj} from now on", "{name} owns {proj} from now on."),
    ("weekly demo moved to {dayname} {time}", "The weekly demo moves to {dayname} at {time}."),
    ("postpone {proj} review to next wk", "The review of {proj} is postponed to next week."),
    ("ok to hire 1 more {role} for {proj}", "We can hire one more {role} for {proj}."),
    ("agreed: {feature} stays behind a flag for now", "{feature_c} stays behind a feature flag for now."),
    ("dec - {doc} is final, no more edits", "{doc_c} is final, with no more edits."),
    ("we'll retire {thing} in {quarter}", "We will retire {thing} in {quarter}."),
    ("agreed to move {proj} standups to async", "The standups for {proj} move to async updates."),
]
ACTIONS = [
    ("{name} to send {doc} to {name2} by {day}", "{name}: Send {doc} to {name2} (due {day})"),
    ("todo {name}: fix {bug} b4 release", "{name}: Fix {bug} before the release"),
    ("{name} will write up {doc} tmrw", "{name}: Write up {doc} (due tomorrow)"),
    ("{name} -> review {doc} ({day})", "{name}: Review {doc} (due {day})"),
    ("ask {name} re {topic} - {name2} to follow up eow",
     "{name2}: Follow up with {name} about {topic} (due end of week)"),
    ("ai: {name} book room for {proj} retro by {day}", "{name}: Book a room for the retro on {proj} (due {day})"),
    ("{name} & {name2} pair on {bug} asap", "{name} and {name2}: Pair on {bug} (due ASAP)"),
    ("{name} to update {thing} w/ new numbers {day}", "{name}: Update {thing} with the new numbers (due {day})"),
    ("todo: {name} sets up a call w/ legal re {proj}", "{name}: Set up a call with legal about {proj}"),
    ("{name} owes {name2} a draft of {doc} by {day}", "{name}: Send {name2} a draft of {doc} (due {day})"),
    ("{name} to check if {feature} breaks {proj}, {day}", "{name}: Check whether {feature} breaks {proj} (due {day})"),
    ("ai {name}: post {doc} in the channel tmrw", "{name}: Post {doc} in the team channel (due tomorrow)"),
]
QUESTIONS = [
    ("q: do we need legal sign-off for {proj}?", "Do we need legal sign-off for {proj}?"),
    ("?? who owns {thing} after {name} leaves", "Who owns {thing} after {name} leaves?"),
    ("{proj} - still on track for {month}?", "Is {proj} still on track for {month}?"),
    ("q for {name}: can we reuse {thing} w/ {proj}", "Can we reuse {thing} with {proj}? (for {name})"),
    ("whats the budget for {proj} in {quarter}?", "What is the budget for {proj} in {quarter}?"),
    ("do ppl actually use {feature}? need data", "Do people actually use {feature}? We need data."),
    ("q: {option} or keep what we have for {proj}?", "Should we choose {option} or keep the current setup for {proj}?"),
    ("how do we handle {topic} w/o {name}??", "How do we handle {topic} without {name}?"),
    ("?? is {bug} blocking {proj}", "Is {bug} blocking {proj}?"),
]

BULLETS = ["- ", "* ", "", "• ", "-", "> "]
HEADER_FORMS = ["{kind} {wd} {mon} {d}", "{kind} - {wd} {d}/{m}", "{kind} {mon} {d} ({wd})", "{d}/{m} {kind} ({wd})"]
ATTENDEE_FORMS = ["ppl: {names}", "attendees - {names}", "present: {names}", "w/ {names}"]


def section_sizes(rng: random.Random) -> tuple[int, int, int]:
    """1-4 items per section, some sections empty, 2-6 items in all."""
    while True:
        sizes = tuple(rng.choice([0, 1, 1, 2, 2, 2, 3, 3, 4]) for _ in range(3))
        if 2 <= sum(sizes) <= 6:
            return sizes


def make_record(rng: random.Random) -> dict:
    date = dt.date(2025, 1, 6) + dt.timedelta(days=rng.randrange(0, 360))
    while date.weekday() > 4:  # meetings on workdays
        date += dt.timedelta(days=1)
    kind_raw, kind = rng.choice(MEETINGS)
    if rng.random() < 0.3:  # a project's own meeting, e.g. "atlas design review"
        proj_raw, proj = rng.choice([p for p in PROJECTS if not p[1].startswith("the ")])
        kind_raw, kind = f"{proj_raw} {kind_raw}", f"{cap(proj)} {kind[0].lower()}{kind[1:]}"
    wd = WEEKDAYS[date.weekday()]
    header = rng.choice(HEADER_FORMS).format(
        kind=kind_raw, wd=wd[:3].lower(), mon=MONTHS[date.month - 1][:3].lower(), d=date.day, m=date.month
    )
    attendees = rng.sample(NAMES, rng.randint(2, 5))

    items: list[tuple[str, str, str]] = []  # (section, jotting, tidy)
    for section, templates, n in zip(("dec", "act", "q"), (DECISIONS, ACTIONS, QUESTIONS), section_sizes(rng)):
        for raw_t, tidy_t in rng.sample(templates, n):
            slots = Slots(rng, attendees if rng.random() < 0.8 else NAMES)
            items.append((section, slots.fill(raw_t, False), cap(slots.fill(tidy_t, True))))
    rng.shuffle(items)

    bullet = rng.choice(BULLETS)
    lines = [rng.choice(INSTRUCTIONS), header]
    with_attendees = rng.random() < 0.7
    if with_attendees:
        lines.append(rng.choice(ATTENDEE_FORMS).format(names=rng.choice([", ", " ", "/"]).join(attendees)))
    lines += [bullet + raw for _, raw, _ in items]

    out = [f"## {kind} — {wd} {date.day} {MONTHS[date.month - 1]}"]
    if with_attendees:  # only what the jottings say
        out.append("Attendees: " + ", ".join(cap(n) for n in attendees))
    sections = (("dec", "Decisions", "- "), ("act", "Action items", "- [ ] "), ("q", "Open questions", "- "))
    for section, title, prefix in sections:
        out.append(f"**{title}**")
        tidy = [t for s, _, t in items if s == section]
        out += [prefix + t for t in tidy] if tidy else ["_None_"]
    return {
        "messages": [
            {"role": "user", "content": "\n".join(lines)},
            {"role": "assistant", "content": "\n".join(out)},
        ]
    }


def generate(n: int = N_RECORDS, seed: int = SEED) -> list[dict]:
    """The records of notes.jsonl, in order (the tests compare them to the file)."""
    rng = random.Random(seed)
    records: list[dict] = []
    while len(records) < n:
        record = make_record(rng)
        if sum(len(m["content"]) for m in record["messages"]) <= MAX_CHARS:
            records.append(record)
    return records


def main() -> None:
    records = generate()
    with OUT.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {OUT}")


if __name__ == "__main__":
    main()
