"""Generate data/support_calls/, a summarization example data set for mlxtune.

Run ``python data/make_support_calls.py`` to rewrite ``train.jsonl``,
``valid.jsonl`` and ``test.jsonl`` in ``data/support_calls/`` (the seed is
fixed, so the files come out byte for byte the same).

The task: summarize the transcript of a customer support phone call in one
compact house format. The transcript is 8-16 lines alternating ``Agent:`` and
``Customer:``; in varied order and wording it holds a greeting (agent name and
support desk), who is calling (full name, company or personal account, plan),
the problem (product area, symptom, since when), one or two troubleshooting
steps and their results, the outcome (fixed on the call, workaround, escalated
to engineering, refund or credit, technician visit or callback), the follow-up
(ticket number and/or a day, or none) and sometimes filler (hold, spelling a
name, small talk). Customers speak informally ("um", fragments).

Each line of a file is one chat record::

    {"messages": [{"role": "user", "content": "<instruction>\\n\\n<transcript>"},
                  {"role": "assistant", "content": "<summary>"}]}

and the summary is always three sentences::

    <Full Name> (<Company> | personal account, <Plan> plan) reported that <problem> since <when>.
    <What was tried> did not help; <outcome>.   |   <Step> fixed it on the call.
    Follow-up: ticket #<n>, callback <day>.     |   No follow-up needed.

It holds only facts stated in the transcript, so a model can learn to extract
them. The test split measures generalisation rather than recall: its
customers (first + last name) and ticket numbers never occur in train. All
content is original to this script (Apache-2.0, like the rest of mlxtune).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20250611
SPLIT_SIZES = {"train": 240, "valid": 30, "test": 40}
# Longest record (user + assistant characters): about 300-350 SmolLM2 tokens.
MAX_CHARS = 1400
MIN_LINES, MAX_LINES = 8, 16  # transcript lines
OUT_DIR = Path(__file__).resolve().parent / "support_calls"

INSTRUCTIONS = [
    "Summarize this support call:",
    "Write the call summary for the ticket:",
    "tl;dr of this call please",
    "Summarise the call below in our usual format:",
    "Can you write up this support call?",
    "Call notes please:",
    "Summarize the following call transcript:",
    "What happened on this call? Short summary please.",
    "Give me the short summary of this call for the CRM:",
    "Please summarize:",
    "Recap this customer call:",
    "Summary for the ticket, please:",
    "Condense this call into our summary format:",
    "Quick summary of this phone call?",
]

FIRST_NAMES = [
    "Dana", "Marcus", "Priya", "Tomasz", "Aiko", "Brendan", "Leila", "Samuel", "Ingrid", "Kwame",
    "Rosa", "Elliot", "Nadia", "Victor", "Hannah", "Diego", "Mei", "Oskar", "Fatima", "Jonah",
    "Carla", "Rahul", "Yvonne", "Felipe", "Greta", "Idris", "Sofia", "Liam", "Zainab", "Pedro",
]  # fmt: skip
LAST_NAMES = [
    "Ortiz", "Chen", "Novak", "Okafor", "Lindqvist", "Brennan", "Haddad", "Kowalski", "Tanaka", "Mensah",
    "Delgado", "Fischer", "Moreau", "Patel", "Sullivan", "Nakamura", "Petrov", "Alvarez", "Whitaker", "Johansson",
    "Rossi", "Abara", "Kaplan", "Duarte", "MacLeod", "Varga", "Osei", "Bianchi", "Holm", "Reyes",
]  # fmt: skip
COMPANIES = [
    "Northwind", "Bluepeak Studio", "Harbor Dental", "Lumen Labs", "Oakridge Bakery", "Fernway Logistics",
    "Quarry & Co", "Redkite Media", "Sable Architects", "Tidewater Clinic", "Juniper Legal", "Copperleaf Cafe",
    "Vantage Robotics", "Meridian Tutoring", "Pinecrest Realty",
]  # fmt: skip
PLANS = ["Free", "Starter", "Pro", "Business"]
AGENTS = ["Maya", "Jordan", "Alex", "Sam", "Riley", "Chris", "Taylor", "Morgan"]
DESKS = ["Brightdesk", "Cloudnest", "Tallyhub", "Ledgerly", "Nimbus", "Orbitly", "Parcelio", "Quillstack"]

# Since when: said by the customer and repeated as is in the summary.
SINCE = [
    "since Monday's update", "since the update on Tuesday", "since yesterday", "since this morning",
    "since last Friday", "since about a week ago", "since a few days ago", "since the start of the month",
    "since the weekend", "since last night", "since Wednesday", "since the app update",
]  # fmt: skip
# Days for callbacks and technician visits.
DAYS = [
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Monday morning", "Tuesday afternoon",
    "Thursday morning", "Friday afternoon", "Wednesday at 10am", "tomorrow", "tomorrow morning",
]  # fmt: skip

# A product area: how a caller names it, its symptoms ((two ways a caller says
# it), summary form), troubleshooting steps (agent's imperative, summary
# gerund), workarounds (agent's words, summary phrase), the team a callback
# waits on, and its kind (which outcomes fit).
AREAS = [
    {
        "name": "the CSV export",
        "symptoms": [
            (("the export to CSV times out", "when I export to CSV it just... times out"), "CSV exports time out"),
            (("the CSV export comes out empty", "I export to CSV and the file is, um, empty"),
             "exported CSV files are empty"),
            (("accents come out garbled in the CSV", "the CSV has weird symbols where the accents should be"),
             "CSV exports garble accented characters"),
        ],
        "steps": [
            ("clear the export cache under Settings", "clearing the export cache"),
            ("export a smaller date range", "exporting a smaller date range"),
            ("switch the export encoding to UTF-8", "switching the export encoding to UTF-8"),
        ],
        "workarounds": [
            ("you can export to Excel and save it as CSV from there", "exporting to Excel and saving as CSV"),
            ("the scheduled export will email you the file", "using the scheduled email export"),
        ],
        "team": "data",
        "kind": "software",
    },
    {
        "name": "logging in",
        "symptoms": [
            (("signing in with Google just loops back to the login page",
              "the Google login keeps sending me back to the login page"),
             "Google sign-in loops back to the login page"),
            (("my two-factor codes get rejected", "the 2FA codes, um, they never work"),
             "two-factor codes are rejected"),
            (("the password reset email never arrives", "I ask for a password reset and no email comes"),
             "password reset emails never arrive"),
        ],
        "steps": [
            ("sign in from a private browser window", "signing in from a private window"),
            ("clear your browser cookies", "clearing the browser cookies"),
            ("log out on all devices and try again", "logging out on all devices"),
        ],
        "workarounds": [
            ("you can sign in with the magic link on the login page", "signing in with the emailed magic link"),
            ("you can log in from the mobile app", "logging in from the mobile app"),
        ],
        "team": "security",
        "kind": "software",
    },
    {
        "name": "my invoices",
        "symptoms": [
            (("I got charged twice", "there's two charges on my card, same amount"), "they were charged twice"),
            (("the invoice PDF won't download", "I click download on the invoice and nothing happens"),
             "invoice PDFs do not download"),
            (("the invoices show our old VAT number", "our VAT number on the invoices is the old one"),
             "invoices show an outdated VAT number"),
        ],
        "steps": [
            ("refresh the billing page", "refreshing the billing page"),
            ("save your billing details again", "re-saving the billing details"),
            ("download it from another browser", "downloading from another browser"),
        ],
        "workarounds": [("I can email the invoices to you directly", "sending the invoices by email")],
        "team": "billing",
        "kind": "billing",
    },
    {
        "name": "the mobile app",
        "symptoms": [
            (("the mobile app doesn't sync with the web version",
              "stuff I add on my phone never shows up on the website"),
             "the mobile app does not sync with the web app"),
            (("the app crashes when I open it", "the app just closes as soon as I open it"),
             "the mobile app crashes on launch"),
        ],
        "steps": [
            ("log out of the app and back in", "logging out of the app and back in"),
            ("update the app from the app store", "updating the app"),
            ("reinstall the app", "reinstalling the app"),
        ],
        "workarounds": [("you can use the web version in your phone's browser", "using the web version on the phone")],
        "team": "mobile",
        "kind": "software",
    },
    {
        "name": "the dashboard",
        "symptoms": [
            (("the dashboard takes forever to load", "the dashboard just spins, like, for ages"),
             "the dashboard loads very slowly"),
            (("the sales report shows every number twice", "the numbers in the sales report are, um, doubled"),
             "the sales report shows doubled numbers"),
            (("the charts are blank", "the charts on the dashboard are just empty boxes"),
             "dashboard charts are blank"),
        ],
        "steps": [
            ("remove the date filter and reload", "removing the date filter"),
            ("turn off your browser extensions", "disabling browser extensions"),
            ("rebuild the report from the Reports menu", "rebuilding the report"),
        ],
        "workarounds": [("the weekly summary email has the same numbers", "using the weekly summary email")],
        "team": "reporting",
        "kind": "software",
    },
    {
        "name": "the calendar sync",
        "symptoms": [
            (("bookings don't show up in Google Calendar", "appointments aren't appearing in my Google Calendar"),
             "bookings do not appear in Google Calendar"),
            (("appointments show up an hour off", "everything in the calendar is one hour late"),
             "appointments appear one hour off"),
        ],
        "steps": [
            ("disconnect the calendar and connect it again", "reconnecting the calendar"),
            ("check the time zone in your profile", "checking the profile time zone"),
            ("force a sync from the Integrations page", "forcing a sync"),
        ],
        "workarounds": [("you can subscribe to the iCal link instead", "subscribing to the iCal link")],
        "team": "integrations",
        "kind": "software",
    },
    {
        "name": "uploads",
        "symptoms": [
            (("uploads fail at 99 percent", "files get to like 99 percent and then fail"),
             "uploads fail at 99 percent"),
            (("big files won't upload", "anything over a few megabytes just won't upload"),
             "large files fail to upload"),
        ],
        "steps": [
            ("use a different browser", "using another browser"),
            ("rename the file without special characters", "renaming the file"),
            ("upload it from the desktop app", "uploading from the desktop app"),
        ],
        "workarounds": [
            ("you can zip the files and upload the zip", "uploading the files as a zip"),
            ("you can share a link to the file instead", "sharing a link instead"),
        ],
        "team": "storage",
        "kind": "software",
    },
    {
        "name": "the notification emails",
        "symptoms": [
            (("our customers stopped getting confirmation emails", "the confirmation emails aren't going out"),
             "confirmation emails no longer reach their customers"),
            (("every notification email arrives three times", "I get the same email, like, three times"),
             "notification emails arrive three times"),
        ],
        "steps": [
            ("check the sender address under Email settings", "checking the sender address"),
            ("send a test email from the settings page", "sending a test email"),
            ("turn the notification off and on again", "toggling the notification off and on"),
        ],
        "workarounds": [
            ("you can resend confirmations by hand from the order page", "resending confirmations by hand"),
        ],
        "team": "messaging",
        "kind": "software",
    },
    {
        "name": "the card reader",
        "symptoms": [
            (("the card reader won't pair with the tablet", "the card reader just won't connect to the tablet"),
             "the card reader will not pair with the tablet"),
            (("the card reader declines every card", "every single card gets declined on the reader"),
             "the card reader declines every card"),
            (("the reader's battery dies after an hour", "the card reader only lasts like an hour"),
             "the card reader battery lasts only an hour"),
        ],
        "steps": [
            ("restart the reader by holding the power button", "restarting the reader"),
            ("turn Bluetooth off and on on the tablet", "toggling Bluetooth on the tablet"),
            ("update the reader firmware from the app", "updating the reader firmware"),
        ],
        "workarounds": [
            ("you can take payments with tap to pay on your phone", "taking payments with tap to pay on the phone"),
            ("you can key in the card numbers in the app", "keying in card numbers in the app"),
        ],
        "team": "hardware",
        "kind": "hardware",
    },
    {
        "name": "the receipt printer",
        "symptoms": [
            (("the receipt printer prints blank receipts", "receipts come out totally blank"),
             "the receipt printer prints blank receipts"),
            (("the receipt printer shows as offline", "the printer keeps saying it's offline"),
             "the receipt printer shows as offline"),
        ],
        "steps": [
            ("flip the paper roll over", "flipping the paper roll"),
            ("unplug the printer for thirty seconds", "power-cycling the printer"),
            ("print a test page from the settings", "printing a test page"),
        ],
        "workarounds": [("you can email receipts to customers instead", "emailing receipts instead")],
        "team": "hardware",
        "kind": "hardware",
    },
    {
        "name": "the internet",
        "symptoms": [
            (("the internet drops every evening", "the connection cuts out every evening, like clockwork"),
             "the internet connection drops every evening"),
            (("the Wi-Fi barely works in the back office", "there's almost no Wi-Fi in the back office"),
             "the Wi-Fi is very weak in the back office"),
        ],
        "steps": [
            ("restart the router", "restarting the router"),
            ("move the router away from the microwave", "moving the router"),
            ("switch the router to the 5 GHz band", "switching to the 5 GHz band"),
        ],
        "workarounds": [("you can use a network cable for the main computer", "using a network cable")],
        "team": "network",
        "kind": "hardware",
    },
    {
        "name": "the desk phone",
        "symptoms": [
            (("calls drop after about ten minutes", "every call cuts off after ten minutes or so"),
             "calls drop after about ten minutes"),
            (("people can't hear me on the desk phone", "callers say they can't hear me"),
             "callers cannot hear them on the desk phone"),
            (("the desk phone has no dial tone", "there's no dial tone, um, at all"),
             "the desk phone has no dial tone"),
        ],
        "steps": [
            ("reboot the phone", "rebooting the phone"),
            ("plug the phone straight into the router", "plugging the phone into the router"),
            ("swap in a different network cable", "swapping the network cable"),
        ],
        "workarounds": [("you can forward calls to your mobile", "forwarding calls to the mobile")],
        "team": "network",
        "kind": "hardware",
    },
    {
        "name": "my subscription",
        "symptoms": [
            (("I upgraded but I still don't have the new features", "we paid for the upgrade and nothing changed"),
             "their upgrade's new features are missing"),
            (("we're billed for more seats than we have", "the bill counts more seats than we actually have"),
             "they are billed for more seats than they have"),
        ],
        "steps": [
            ("log out and back in so the plan refreshes", "logging out and back in"),
            ("remove the inactive users under Team", "removing inactive users"),
        ],
        "workarounds": [("I can adjust it by hand on our side", "a manual adjustment on the account")],
        "team": "billing",
        "kind": "billing",
    },
    {
        "name": "the API",
        "symptoms": [
            (("our API calls get 401 errors", "the API keeps saying 401, unauthorized"), "API calls return 401 errors"),
            (("the webhook to our shop stopped firing", "the webhooks just... don't fire anymore"),
             "webhooks stopped firing"),
        ],
        "steps": [
            ("generate a new API key", "generating a new API key"),
            ("check the webhook URL in the developer settings", "checking the webhook URL"),
            ("send a test event from the dashboard", "sending a test event"),
        ],
        "workarounds": [("you can poll the orders endpoint every few minutes", "polling the orders endpoint")],
        "team": "integrations",
        "kind": "software",
    },
    {
        "name": "team permissions",
        "symptoms": [
            (("a new teammate can't see any projects", "our new hire can't see, um, anything"),
             "a new teammate cannot see any projects"),
            (("I can't remove an old user", "there's an old user I can't delete"), "they cannot remove an old user"),
        ],
        "steps": [
            ("send the invite again", "re-sending the invite"),
            ("set the role to Editor and save", "setting the role to Editor"),
        ],
        "workarounds": [("you can share the projects with a guest link", "sharing the projects with a guest link")],
        "team": "accounts",
        "kind": "software",
    },
]

# Outcomes that fit an area's kind, with weights.
OUTCOMES = {
    "software": {"fixed": 4, "workaround": 3, "escalated": 3, "credit": 1, "callback": 2},
    "billing": {"fixed": 3, "workaround": 1, "escalated": 1, "credit": 4, "callback": 2},
    "hardware": {"fixed": 4, "workaround": 2, "escalated": 1, "credit": 1, "callback": 1, "technician": 3},
}
# (agent's words, summary clause)
ESCALATIONS = [
    ("I'm escalating this to our engineering team.", "the agent escalated it to engineering"),
    ("This looks like a bug, so I'm filing it with engineering as high priority.",
     "the agent filed a high-priority bug with engineering"),
    ("I'm escalating it to engineering and attaching your account logs.",
     "the agent escalated it to engineering with the account logs"),
    ("Engineering needs to look at this, I'm escalating it now.", "the agent escalated it to engineering"),
]
CREDITS = ["a $10 credit", "a $20 credit", "a $25 credit", "a one-month credit", "a 50 percent credit on this month"]
BILLING_CREDITS = ["a refund of the extra charge", "a refund for this month", "a $15 refund"]
CREDIT_LINES = [
    "I'm sorry for the trouble, so I've added {credit} to your account.",
    "That's on us. I've issued {credit}, you'll see it on the next invoice.",
    "We know about this one and it's being worked on. I've put {credit} on your account.",
]
FIXED_LINES = ["Great, glad that sorted it.", "Perfect, so that was the problem.", "Good, that's what I hoped."]
WORKAROUND_LINES = ["Sorry about that. For now, {wa}.", "Okay, until it's fixed, {wa}.", "Hmm. As a workaround, {wa}."]
TECHNICIAN_LINES = [
    "I'll send a technician out {when}.",
    "Then we need someone on site. A technician can come {when}, does that work?",
    "I'm booking a technician visit for {when}.",
]
CALLBACK_LINES = [
    "I need to check this with our {team} team. I'll call you back {when}.",
    "Let me take this to the {team} team, and I'll call you {when}.",
    "I'll have to ask the {team} team. Can I call you back {when}?",
]
TICKET_LINES = ["Your ticket number is {t}.", "I've opened ticket #{t} for this.", "The ticket is #{t}."]
TICKET_AND_CALL_LINES = [
    "Your ticket number is {t}, and we'll call you {when} with an update.",
    "I've opened ticket #{t}. Someone will call you back {when}.",
]
ACKS = ["okay, thanks.", "alright, thank you.", "ugh, okay. Fine.", "okay, as long as someone looks at it.", "got it."]
HAPPY_ACKS = ["great, thank you!", "yeah, thanks so much.", "amazing, thanks.", "perfect, thanks!"]
FAILED = ["okay... done. Still the same.", "hm, no, same thing.", "okay, one sec... no, it's still doing it.",
          "did that. Nope.", "no change, sorry."]  # fmt: skip
WORKED = ["oh! Yes, that worked.", "okay... oh, it works now!", "hang on... yep, that fixed it.",
          "huh, it's working now."]  # fmt: skip
STEP_ASKS = ["Could you {step}?", "Let's try this: {step}.", "Can you {step} for me?",
             "First, could you {step} and try again?", "Let's {step} and see."]  # fmt: skip
NEXT_STEP_ASKS = ["Okay, next, could you {step}?", "Hmm. Then let's {step}.", "Alright, can you {step} now?"]
GREETINGS = [
    "Thanks for calling {desk} support, this is {agent}. How can I help?",
    "{desk} support, {agent} speaking.",
    "Hi, you've reached {desk}, my name is {agent}. What can I do for you?",
    "Good morning, {desk} help desk, {agent} here.",
    "Hello, {desk} support, this is {agent}.",
]
HI = ["hi", "hello", "hey, hi", "hi there", "hi, um"]
UMS = ["um, ", "uh, ", "so, um, ", "yeah, so ", "okay so "]
CLOSINGS = ["Anything else I can help with?", "Is there anything else today?", "Anything else on your end?"]
CLOSING_REPLIES = ["no, that's it. Thanks!", "nope, that's all.", "no, thanks. Bye."]
GOODBYES = ["Thanks for calling {desk}. Have a good one!", "Thanks for your patience, bye now.", "Take care, {first}!"]
SMALL_TALK = [
    ("Sorry about the wait today, it's a busy one.", ["no worries.", "oh, that's fine."]),
    ("How's your week going otherwise?", ["oh, busy, you know.", "long, honestly, ha."]),
    ("Let me pull up your account, one moment.", ["sure.", "mhm."]),
]
HOLDS = ["Can I put you on a short hold while I check?", "Let me check something, can you hold for a minute?"]

ASKS = {  # agent questions for each group of facts
    ("name",): ["Can I get your full name, please?", "Who am I speaking with?", "And your name, please?"],
    ("name", "org"): ["Can I have your name and the company on the account?",
                      "Who am I speaking with, and is this a company account?"],
    ("org",): ["Is this a company or a personal account?", "Which company is the account under?"],
    ("plan",): ["And which plan are you on?", "Do you know which plan you have?"],
    ("org", "plan"): ["Which account is this, and what plan?", "And the account and plan, please?"],
    ("symptom", "since"): ["What's going on?", "What can I help you with?", "What seems to be the problem?"],
    ("symptom",): ["What's going on?", "What seems to be the problem?", "How can I help today?"],
    ("since",): ["Since when has this been happening?", "When did this start?", "How long has it been like this?"],
}  # fmt: skip


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def when(day: str) -> str:
    """'on Thursday', but 'tomorrow morning'."""
    return day if day.startswith("tomorrow") else f"on {day}"


class Call:
    """The facts of one call, and the ways a caller or agent says them."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.first, self.last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        self.full = f"{self.first} {self.last}"
        self.company = rng.choice(COMPANIES) if rng.random() < 0.7 else None
        self.plan = rng.choice(PLANS[:3] if self.company is None else PLANS[1:])
        self.agent, self.desk = rng.choice(AGENTS), rng.choice(DESKS)
        self.area = rng.choice(AREAS)
        (self.symptom_says, self.symptom) = rng.choice(self.area["symptoms"])
        self.since = rng.choice(SINCE)

    def um(self, s: str, p: float = 0.35) -> str:
        return self.rng.choice(UMS) + s if self.rng.random() < p else s

    def says_symptom(self) -> str:
        return self.um(self.rng.choice(self.symptom_says))

    def says_since(self) -> str:
        return self.rng.choice(["{s}.", "um, {s}, I think.", "I think {s}?", "{s}, more or less."]).format(s=self.since)

    def says_plan(self) -> str:
        if self.plan == "Free":
            return self.rng.choice(["just the Free plan", "the Free plan"])
        we = "I'm" if self.company is None else "we're"
        return self.rng.choice([f"{we} on {self.plan}", f"the {self.plan} plan", f"{self.plan}, I think"])

    def says_org(self) -> str:
        if self.company is None:
            return self.rng.choice(["it's a personal account", "just my personal account", "personal, just me"])
        return self.rng.choice([f"from {self.company}", f"the account is {self.company}", f"at {self.company}"])

    def answer(self, group: tuple[str, ...]) -> str:
        """The customer's answer to the agent's question about `group`."""
        r = self.rng
        if group == ("name",):
            return r.choice(["{n}.", "it's {n}.", "yeah, {n}."]).format(n=self.full)
        if group == ("name", "org"):
            return f"{self.full}, {self.says_org()}."
        if group == ("org",):
            if self.company is None:
                return r.choice(["personal, just me.", "it's a personal account.", "oh, no company, it's personal."])
            return r.choice(["{c}.", "it's under {c}.", "company account, {c}."]).format(c=self.company)
        if group == ("plan",):
            return r.choice(["{p}.", "um, {p}.", "{p}, yeah."]).format(p=self.says_plan())
        if group == ("org", "plan"):
            org = self.company if self.company else "personal account"
            return f"{org}, {self.says_plan()}."
        if group == ("symptom", "since"):
            return f"{self.says_symptom()}, {self.since}."
        if group == ("symptom",):
            return self.says_symptom() + "."
        return self.says_since()

    def opening(self) -> tuple[set[str], str]:
        """The caller's first line and the facts it gives."""
        r, hi = self.rng, self.rng.choice(HI)
        kind = r.choice(["area", "symptom", "symptom_since", "name", "name_org", "name_org_plan", "name_symptom"])
        if kind == "area":
            return set(), f"{hi}, I have a problem with {self.area['name']}."
        if kind == "symptom":
            return {"symptom"}, f"{hi}. {cap(self.rng.choice(self.symptom_says))}."
        if kind == "symptom_since":
            return {"symptom", "since"}, f"{hi}, so {self.rng.choice(self.symptom_says)}, {self.since}."
        if kind == "name":
            return {"name"}, f"{hi}, this is {self.full}."
        if kind == "name_org":
            return {"name", "org"}, f"{hi}, it's {self.full}, {self.says_org()}."
        if kind == "name_org_plan":
            return {"name", "org", "plan"}, f"{hi}, {self.full} here, {self.says_org()}, {self.says_plan()}."
        return {"name", "symptom"}, f"{hi}, this is {self.full}. {cap(self.rng.choice(self.symptom_says))}."


def ask_groups(rng: random.Random, missing: set[str]) -> list[tuple[str, ...]]:
    """Split the facts the opening left out into questions, in a random order."""
    groups: list[tuple[str, ...]] = []
    candidates = list(ASKS)
    rng.shuffle(candidates)
    for g in candidates:
        if set(g) <= missing:
            groups.append(g)
            missing -= set(g)
    rng.shuffle(groups)
    if ("since",) in groups and ("symptom",) in groups:  # the question about when comes after the problem
        groups.remove(("since",))
        groups.insert(groups.index(("symptom",)) + 1, ("since",))
    return groups


def make_call(rng: random.Random) -> tuple[list[str], str]:
    """One call: its transcript lines and its summary."""
    c = Call(rng)
    given, first_reply = c.opening()
    exchanges: list[list[str]] = [[rng.choice(GREETINGS).format(desk=c.desk, agent=c.agent), first_reply]]

    # Who and what: the agent asks for what the opening left out.
    prefix = rng.choice(["Sorry to hear that. ", "Oh no, okay. ", "Okay, I can help with that. ", ""])
    if "symptom" not in given:
        prefix = rng.choice([f"Hi {c.first}. ", f"Thanks, {c.first}. ", ""]) if "name" in given else ""
    for group in ask_groups(rng, {"name", "org", "plan", "symptom", "since"} - given):
        question = rng.choice(ASKS[group])
        if group == ("plan",) and rng.random() < 0.3:  # the agent reads it off the account
            exchanges.append([f"{prefix}Let me pull that up... you're on {c.plan}, right?", "yes, that's right."])
        else:
            exchanges.append([prefix + question, c.answer(group)])
        if "name" in group:
            prefix = rng.choice([f"Thanks, {c.first}. ", "Thanks. ", ""])
        else:
            prefix = rng.choice(["Okay. ", "Got it. ", "Right. ", ""])
        if "name" in group and rng.random() < 0.2:
            spelled = "-".join(c.last.upper())
            exchanges.append([f"{prefix}Could you spell the last name?", f"sure, {spelled}."])
            prefix = "Thanks. "

    # Troubleshooting: one or two steps; only the last one can work.
    outcome = rng.choices(*zip(*OUTCOMES[c.area["kind"]].items()))[0]
    steps = rng.sample(c.area["steps"], rng.choice([1, 1, 2]))
    if rng.random() < 0.25:
        talk, replies = rng.choice(SMALL_TALK)
        exchanges.append([prefix + talk, rng.choice(replies)])
        prefix = "Okay. "
    for i, (imp, _) in enumerate(steps):
        worked = outcome == "fixed" and i == len(steps) - 1
        ask = rng.choice(STEP_ASKS if i == 0 else NEXT_STEP_ASKS).format(step=imp)
        exchanges.append([(prefix if i == 0 else "") + ask, c.um(rng.choice(WORKED if worked else FAILED), 0.2)])
    if outcome != "fixed" and rng.random() < 0.2:
        exchanges.append([rng.choice(HOLDS), rng.choice(["sure.", "yeah, okay.", "no problem."])])
        hold = "Thanks for holding. "
    else:
        hold = ""

    # The outcome, and what happens next.
    ticket = f"{rng.randrange(10000, 100000)}"
    day = rng.choice(DAYS)
    has_ticket = rng.random() < {"fixed": 0.3, "credit": 0.5, "workaround": 0.7, "callback": 0.6}.get(outcome, 0.8)
    has_call = outcome == "callback" or (outcome in ("workaround", "escalated") and rng.random() < 0.4)
    if outcome == "escalated":
        has_ticket = True
    tried = cap(steps[0][1]) if len(steps) == 1 else f"{cap(steps[0][1])} and {steps[1][1]}"
    done = f"{tried} did not help"
    if outcome == "fixed":
        line = rng.choice(FIXED_LINES)
        ack = rng.choice(HAPPY_ACKS)
        if len(steps) == 1:
            did = f"{cap(steps[0][1])} fixed it on the call"
        else:
            did = f"{cap(steps[0][1])} did not help, but {steps[1][1]} fixed it on the call"
    elif outcome == "workaround":
        wa_says, wa = rng.choice(c.area["workarounds"])
        line = rng.choice(WORKAROUND_LINES).format(wa=wa_says)
        ack = rng.choice(ACKS[:3] + ["hm, alright, I can do that."])
        did = f"{done}; the agent suggested a workaround: {wa}"
    elif outcome == "escalated":
        line, clause = rng.choice(ESCALATIONS)
        ack = rng.choice(ACKS)
        did = f"{done}; {clause}"
    elif outcome == "credit":
        credit = rng.choice(BILLING_CREDITS if c.area["kind"] == "billing" else CREDITS)
        line, ack = rng.choice(CREDIT_LINES).format(credit=credit), rng.choice(HAPPY_ACKS + ["okay, appreciated."])
        did = f"{done}; the agent issued {credit}"
    elif outcome == "technician":
        line, ack = rng.choice(TECHNICIAN_LINES).format(when=when(day)), rng.choice(["yes, that works.", "okay, fine."])
        did = f"{done}; the agent booked a technician visit"
    else:  # callback
        team = c.area["team"]
        line, ack = rng.choice(CALLBACK_LINES).format(team=team, when=when(day)), rng.choice(["okay, sure.", "sure."])
        did = f"{done}; the agent will check with the {team} team and call back"

    extra_call = has_call and outcome != "callback"
    if has_ticket or extra_call:
        if extra_call and has_ticket:
            follow = rng.choice(TICKET_AND_CALL_LINES).format(t=ticket, when=when(day))
        elif has_ticket:
            follow = rng.choice(TICKET_LINES).format(t=ticket)
        else:
            follow = f"Someone will call you {when(day)} with an update."
        style = rng.choice(["merged", "separate", "asked"])
        if style == "merged":
            exchanges.append([f"{hold}{line} {follow}", ack])
        elif style == "separate":
            exchanges.append([hold + line, ack])
            exchanges.append([follow, rng.choice(["got it, thanks.", "okay.", "great."])])
        else:
            question = "is there a ticket number?" if has_ticket else "will someone get back to me?"
            exchanges.append([hold + line, f"{ack[:-1]}. {cap(question)}"])
            exchanges.append([f"Yes. {follow}", rng.choice(["got it, thanks.", "okay, great."])])
    else:
        exchanges.append([hold + line, ack])

    lines = [x for pair in exchanges for x in pair]
    if rng.random() < 0.5 or len(lines) < MIN_LINES:
        lines += [rng.choice(CLOSINGS), rng.choice(CLOSING_REPLIES)]
    if rng.random() < 0.4 or len(lines) < MIN_LINES:
        lines.append(rng.choice(GOODBYES).format(desk=c.desk, first=c.first))
    transcript = [f"{'Customer' if i % 2 else 'Agent'}: {cap(text)}" for i, text in enumerate(lines)]

    org = c.company or "personal account"
    followups = ([f"ticket #{ticket}"] if has_ticket else []) + (
        [f"technician visit {when(day)}"] if outcome == "technician" else []
    ) + ([f"callback {when(day)}"] if has_call else [])
    summary = (
        f"{c.full} ({org}, {c.plan} plan) reported that {c.symptom} {c.since}. {did}. "
        + (f"Follow-up: {', '.join(followups)}." if followups else "No follow-up needed.")
    )
    return transcript, summary


def make_record(rng: random.Random) -> dict:
    while True:
        transcript, summary = make_call(rng)
        if MIN_LINES <= len(transcript) <= MAX_LINES:
            break
    user = rng.choice(INSTRUCTIONS) + "\n\n" + "\n".join(transcript)
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": summary}]}


def customer_and_ticket(record: dict) -> tuple[str, str | None]:
    """The caller's full name and the ticket number (or None), read off the summary."""
    summary = record["messages"][1]["content"]
    ticket = summary.split("ticket #")[1][:5] if "ticket #" in summary else None
    return summary.split(" (")[0], ticket


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """The records of train, valid and test, in order (the tests compare them to the files).

    Records are unique, and so are ticket numbers; a test record's caller
    (first + last name) never appears in train.
    """
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_SIZES}
    seen_texts: set[str] = set()
    seen_tickets: set[str] = set()
    train_names: set[str] = set()
    for name, size in SPLIT_SIZES.items():
        while len(splits[name]) < size:
            record = make_record(rng)
            texts = [m["content"] for m in record["messages"]]
            customer, ticket = customer_and_ticket(record)
            if (
                sum(map(len, texts)) > MAX_CHARS
                or seen_texts & set(texts)
                or (ticket is not None and ticket in seen_tickets)
                or (name == "test" and customer in train_names)
            ):
                continue
            splits[name].append(record)
            seen_texts.update(texts)
            if ticket is not None:
                seen_tickets.add(ticket)
            if name == "train":
                train_names.add(customer)
    return splits


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for name, records in generate().items():
        path = OUT_DIR / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(records)} {name} records to {path}")


if __name__ == "__main__":
    main()
