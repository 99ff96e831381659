"""Generate data/style/{train,valid,test}.jsonl, a style-mimicry example data set.

Run ``python data/make_style.py`` to rewrite the three files (the seed is
fixed, so they come out byte for byte the same).

The task: answer in "Mira's newsletter voice", the voice of a fictional person
who writes a short, friendly weekly email about everyday things. The content of
each reply changes with the topic; the voice does not. A few minutes of LoRA on
a small model should make it greet, keep sentences short, give a tip and sign
off the way Mira does, whatever the topic.

User turn: one request naming a topic, in one of many phrasings (some casual
and lowercase), e.g. "Write this week's note about composting." Assistant
turn, always::

    Hey friends,

    <opening line about the topic>
    <two or three short facts about the topic, in random order>

    Quick tip: <one tip for the topic>

    <closing line>

    Stay curious,
    Mira

About half of the replies use an em dash (it lives in some of the opening and
closing lines, never in the facts). Records of one topic differ in request,
facts and their order, tip, opening and closing.

The splits hold out whole topics, so that the test split measures whether the
model carries the style over to new content rather than recalls records: the
topics in TEST_TOPICS and VALID_TOPICS never appear in train.jsonl. All
content, facts included, is original to this script (Apache-2.0, like the
rest of mlxtune).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20250214
PER_TOPIC = 8
# Longest record (user + assistant characters). Keeps every record near 150-250
# SmolLM2 tokens, and under 512 tokens even for a nearly byte-level tokenizer.
MAX_CHARS = 900
OUT_DIR = Path(__file__).resolve().parent / "style"
SPLITS = ("train", "valid", "test")

GREETING = "Hey friends,"
SIGN_OFF = "Stay curious,\nMira"

INSTRUCTIONS = [
    "Write this week's note about {topic}.",
    "Can you write a short newsletter bit on {topic}?",
    "A few lines for the readers about {topic}, please.",
    "newsletter: {topic}",
    "Draft the weekly newsletter. Topic: {topic}.",
    "I need this week's issue. Make it about {topic}.",
    "Write a short newsletter section on {topic}.",
    "mira's note this week is on {topic} pls",
    "Could you write up {topic} for the newsletter?",
    "Quick newsletter post about {topic}?",
    "This week's theme is {topic}. Write it up in Mira's voice.",
    "write the weekly email, theme is {topic}",
    "Please write a newsletter entry about {topic}.",
    "Short note for subscribers on {topic}, thanks!",
    "next issue is about {topic}, can you draft it?",
    "Topic for Friday's email: {topic}. Go for it.",
]

# Three of the eight openers and three of the eight closers carry an em dash,
# so about half of the replies contain one.
OPENERS = [
    "This week I fell down a rabbit hole: {topic}.",
    "This week's obsession — {topic}.",
    "Let's talk about {topic} this week.",
    "I spent the week reading about {topic} — bear with me.",
    "Today's note is all about {topic}.",
    "A reader asked me about {topic}, so here goes.",
    "Topic of the week — {topic}. I'm hooked.",
    "I've been thinking about {topic} a lot lately.",
]
CLOSERS = [
    "Small things, big wonder.",
    "The world is full of quiet marvels — this is one of them.",
    "Hit reply and tell me what you know about {topic}.",
    "That's all on {topic} — see you next week.",
    "Go look closer at something ordinary this week.",
    "Tell me what you try. I read every reply — really.",
    "Who knew there was so much to say about {topic}?",
    "More next week. Same time, same inbox.",
]

# (topic, facts, tips). Facts are short, plain, true sentences; a reply uses
# two or three of them. The topic reads well inside a sentence.
TOPICS = [
    ("sourdough starters", [
        "A starter is just flour and water full of wild yeast and bacteria.",
        "Lactic acid bacteria in the starter give the bread its sour taste.",
        "A healthy starter often doubles in size within hours of feeding.",
        "Many bakers feed it equal weights of flour and water.",
        "A starter kept in the fridge needs feeding much less often.",
    ], [
        "Put a rubber band around the jar after feeding to track the rise.",
        "Add a spoonful of whole-grain flour to wake up a sluggish starter.",
    ]),
    ("composting", [
        "A good compost pile mixes greens and browns.",
        "Greens are rich in nitrogen, like vegetable scraps and grass clippings.",
        "Browns are rich in carbon, like dry leaves, straw and cardboard.",
        "Microbes do most of the work, and an active pile gets warm.",
        "Turning the pile lets in air and speeds things up.",
    ], [
        "Chop scraps small so they break down faster.",
        "If the pile smells bad, add more browns and turn it.",
    ]),
    ("tide pools", [
        "Tide pools form in rocky dips that trap seawater as the tide goes out.",
        "Their residents cope with big swings in temperature and saltiness.",
        "Sea anemones pull in their tentacles to hold water at low tide.",
        "Sea stars move on hundreds of tiny tube feet.",
        "Hermit crabs move into bigger shells as they grow.",
    ], [
        "Check a tide table and go around low tide.",
        "Put any rock you lift back exactly as you found it.",
    ]),
    ("learning to juggle", [
        "Most people learn with three balls.",
        "The basic three-ball pattern is called the cascade.",
        "In the cascade, every ball crosses over to the other hand.",
        "Beanbags are easier than bouncy balls because they don't roll away.",
        "A 2004 study found brain changes in people learning to juggle.",
    ], [
        "Practise over a bed so dropped balls stay close.",
        "Master one ball, then two, before adding the third.",
    ]),
    ("planets in the night sky", [
        "Planets tend to twinkle less than stars.",
        "Venus is the brightest planet and shows up near dawn or dusk.",
        "Planets stay close to the ecliptic, the Sun's yearly path across the sky.",
        "Jupiter's four largest moons show up in steady binoculars.",
        "Mars often looks orange-red to the naked eye.",
    ], [
        "Use a free sky map app to tell planets from stars.",
        "Give your eyes twenty minutes to adjust to the dark.",
    ]),
    ("houseplants in low light", [
        "Every plant needs some light to make its food.",
        "ZZ plants and snake plants cope well with low light.",
        "Pothos keeps growing in dim rooms, just more slowly.",
        "Light fades fast as you move away from a window.",
        "Plants in dim light use less water.",
    ], [
        "Wipe the dust off leaves so they catch more light.",
        "Let the soil dry out more between waterings.",
    ]),
    ("bike maintenance", [
        "The right tyre pressure is usually printed on the tyre's sidewall.",
        "Tyres slowly lose air even without a puncture.",
        "A clean, oiled chain runs smoother and lasts longer.",
        "A worn, stretched chain wears out the gears faster.",
        "Brake pads wear down and need replacing over time.",
    ], [
        "Check your tyre pressure once a week.",
        "Wipe the chain after wet rides, then oil it lightly.",
    ]),
    ("the history of the pencil", [
        "Pencil lead is really graphite mixed with clay.",
        "A big graphite deposit was found in Borrowdale, England, in the 1500s.",
        "Nicolas-Jacques Conté patented the graphite-and-clay method in 1795.",
        "More clay gives a harder pencil and a lighter line.",
        "On a pencil, H stands for hard and B for black.",
    ], [
        "Sketch with a soft B pencil and write with an HB.",
        "Lay a sheet of paper over finished drawings to stop smudges.",
    ]),
    ("honeybees", [
        "A colony has one queen, thousands of workers and some drones.",
        "All worker bees are female.",
        "Bees share the location of flowers through the waggle dance.",
        "Honey is nectar that bees thicken by evaporating its water.",
        "In summer, a worker bee lives only a few weeks.",
    ], [
        "Plant flowers that bloom at different times of the year.",
        "Let some clover grow in the lawn for foraging bees.",
    ]),
    ("making sauerkraut", [
        "Sauerkraut needs only cabbage and salt.",
        "Salt pulls water out of the cabbage to form a brine.",
        "Lactic acid bacteria already on the cabbage do the fermenting.",
        "The cabbage must stay under the brine to keep mould away.",
        "A few weeks at cool room temperature is typical.",
    ], [
        "Use about two percent salt by weight of cabbage.",
        "Weigh the cabbage down with a small jar of water.",
    ]),
    ("birdwatching in the city", [
        "City pigeons descend from rock doves that nest on cliffs.",
        "Peregrine falcons nest on tall buildings in many cities.",
        "Birds are most active and vocal in the early morning.",
        "Crows can recognise individual human faces.",
        "Many birds are easier to tell apart by song than by sight.",
    ], [
        "Start with a simple pair of 8x binoculars.",
        "Learn the five most common birds on your street first.",
    ]),
    ("cold brew coffee", [
        "Cold brew steeps coarse coffee grounds in cold water for hours.",
        "Steeping usually takes 12 to 24 hours.",
        "Most cold brew is made as a concentrate and diluted later.",
        "It tends to taste smoother and less bitter than hot coffee.",
        "Coarse grounds are easier to filter out afterwards.",
    ], [
        "Steep it in the fridge if your kitchen is warm.",
        "Start with one part coffee to eight parts water by weight.",
    ]),
    ("rain barrels", [
        "A rain barrel collects water from a roof downspout.",
        "One millimetre of rain on one square metre of roof is one litre.",
        "Untreated rainwater is great for gardens but not safe to drink.",
        "A lid or fine mesh stops mosquitoes from breeding inside.",
        "Rainwater is soft and has no added chlorine.",
    ], [
        "Raise the barrel on blocks so a watering can fits under the tap.",
        "Empty and scrub the barrel once a year.",
    ]),
    ("the science of sleep", [
        "Most adults need seven or more hours of sleep a night.",
        "Sleep runs in cycles of roughly 90 minutes.",
        "The most vivid dreams happen during REM sleep.",
        "Bright evening light can delay the release of melatonin.",
        "Teenagers naturally tend to fall asleep and wake later.",
    ], [
        "Keep the same wake-up time, even on weekends.",
        "Dim the lights an hour before bed.",
    ]),
    ("knitting for beginners", [
        "Most knitting is built from two basic stitches, knit and purl.",
        "Garter stitch means knitting every row.",
        "Stockinette alternates knit rows and purl rows.",
        "Stockinette fabric tends to curl at the edges.",
        "Thicker yarn on bigger needles knits up faster.",
    ], [
        "Start with a scarf in a smooth, light-coloured yarn.",
        "Count your stitches at the end of every row.",
    ]),
    ("growing tomatoes", [
        "Tomatoes want full sun, ideally six to eight hours a day.",
        "Frost kills tomato plants.",
        "Indeterminate tomatoes keep growing and fruiting until frost.",
        "Determinate tomatoes stop at a set size and ripen in a burst.",
        "Blossom end rot is linked to uneven watering.",
    ], [
        "Water deeply and regularly rather than a little every day.",
        "Plant them deep, since buried stems grow extra roots.",
    ]),
    ("cast iron pans", [
        "Seasoning is a thin layer of oil baked onto the iron.",
        "Heat turns that oil into a hard, slick coating.",
        "Cast iron holds heat well once it is hot.",
        "It heats unevenly, so a slow preheat helps.",
        "Leaving the pan to soak can make it rust.",
    ], [
        "Dry it on a warm burner right after washing.",
        "Wipe in a very thin layer of oil while it's still warm.",
    ]),
    ("cloud types", [
        "Cumulus are the puffy, cotton-like clouds of fair weather.",
        "Cirrus are high, thin wisps made of ice crystals.",
        "Stratus clouds form flat grey sheets, sometimes with drizzle.",
        "Cumulonimbus are the towering clouds that bring thunderstorms.",
        "Luke Howard gave clouds their Latin names in the early 1800s.",
    ], [
        "Look at the sky at the same time every day for a week.",
        "Snap a photo of any cloud you can't name and look it up later.",
    ]),
    ("brewing loose-leaf tea", [
        "All true tea comes from one plant, Camellia sinensis.",
        "Green tea is usually brewed with water below boiling.",
        "Black tea is usually brewed with water near boiling.",
        "Herbal teas like mint are infusions, not true tea.",
        "Steeping too long draws out tannins and makes tea bitter.",
    ], [
        "Use a timer; three minutes is a good start for black tea.",
        "Let the kettle cool for a few minutes before making green tea.",
    ]),
    ("how rainbows form", [
        "A rainbow forms when raindrops bend and reflect sunlight.",
        "You only see one with the sun behind you.",
        "Red is always on the outside of the main bow.",
        "In a double rainbow, the second bow's colours are reversed.",
        "The main bow sits about 42 degrees from the point opposite the sun.",
    ], [
        "Look for rainbows when the sun comes out right after a shower.",
        "Make your own with a garden hose and the sun at your back.",
    ]),
    ("mushrooms and fungi", [
        "A mushroom is only the fruiting body of a much larger fungus.",
        "The main body is a web of fine threads called mycelium.",
        "Many trees swap sugars with fungi for water and nutrients.",
        "Fungi are more closely related to animals than to plants.",
        "Mushrooms spread by releasing tiny spores.",
    ], [
        "Never eat a wild mushroom unless an expert has identified it.",
        "Make a spore print by leaving a cap on paper overnight.",
    ]),
    ("sea otters", [
        "Sea otters have the densest fur of any animal.",
        "They have no blubber, so their fur keeps them warm.",
        "Some sea otters use rocks as tools to crack shellfish.",
        "Resting otters sometimes wrap themselves in kelp to avoid drifting.",
        "They eat about a quarter of their body weight a day.",
    ], [
        "Bring binoculars and keep a respectful distance.",
        "Look for them resting in kelp beds near the shore.",
    ]),
    ("octopuses", [
        "An octopus has three hearts.",
        "Its blood is blue thanks to a copper-based protein.",
        "Most of its neurons are in its arms, not its head.",
        "Octopuses can change colour and skin texture in moments.",
        "Many octopuses live only a year or two.",
    ], [
        "Look for octopus dens marked by piles of empty shells.",
        "Visit an aquarium at feeding time to see one hunt.",
    ]),
    ("saving seeds from the garden", [
        "Seeds from open-pollinated plants grow true to type.",
        "Seeds from F1 hybrids often don't match the parent plant.",
        "Seeds need to be fully dry before storing.",
        "Cool, dark, dry storage keeps seeds alive longer.",
        "Tomato seeds are often fermented briefly to remove their gel coat.",
    ], [
        "Label every envelope with the plant and the year.",
        "Start with beans or peas, which are easy to save.",
    ]),
    ("no-knead bread", [
        "No-knead bread swaps kneading for a long, slow rise.",
        "Given time, gluten develops without any kneading.",
        "The dough is much wetter than usual bread dough.",
        "It is often baked in a preheated covered pot.",
        "The lid traps steam, which helps form a crisp crust.",
    ], [
        "Mix the dough the night before you want to bake.",
        "Weigh the flour instead of using cups.",
    ]),
    ("the history of the umbrella", [
        "Umbrellas were used for shade in ancient Egypt and China.",
        "The word comes from the Latin umbra, meaning shade.",
        "Jonas Hanway helped make rain umbrellas common in 1700s London.",
        "Early umbrellas often had ribs of whalebone or wood.",
    ], [
        "Open a wet umbrella to dry so it doesn't go mouldy.",
        "Pick one with flexible ribs if you live somewhere windy.",
    ]),
    ("lighthouses", [
        "The Pharos of Alexandria was one of the Seven Wonders of the Ancient World.",
        "The Fresnel lens, from the 1820s, focuses light into a strong beam.",
        "Each lighthouse flashes its own pattern so sailors can tell them apart.",
        "Painted bands help sailors recognise a lighthouse by day.",
        "Most lighthouses today are automated.",
    ], [
        "Check opening days first, since many offer seasonal tours.",
        "Count the seconds between flashes to identify a light.",
    ]),
    ("ants", [
        "Ants live in colonies with one or more queens.",
        "All worker ants are female.",
        "Ants follow scent trails laid by their nestmates.",
        "Leafcutter ants grow fungus on the leaves they cut.",
        "Some ant colonies hold millions of ants.",
    ], [
        "Drop a crumb near an ant trail and watch who finds it.",
        "Keep food sealed to keep ants out of the kitchen.",
    ]),
    ("snowflakes", [
        "Snow crystals form when water vapour freezes onto tiny particles in clouds.",
        "Snow crystals almost always have six sides or six arms.",
        "A crystal's shape depends on temperature and humidity.",
        "Fresh snow is mostly air, which makes it a good insulator.",
        "Snow looks white because it scatters all colours of light.",
    ], [
        "Catch flakes on a chilled dark cloth to see their shapes.",
        "Use a magnifying glass or a phone macro lens.",
    ]),
    ("hedgehogs", [
        "Hedgehogs are mostly active at night.",
        "An adult hedgehog has around 5,000 to 7,000 spines.",
        "They roll into a spiky ball when threatened.",
        "European hedgehogs hibernate through the winter.",
        "They eat beetles, caterpillars and worms.",
    ], [
        "Cut a small gap in your fence so hedgehogs can roam.",
        "Leave out a shallow dish of water, never milk.",
    ]),
    ("recycling plastics", [
        "The number inside the recycling symbol identifies the type of plastic.",
        "That number doesn't mean the item is recyclable where you live.",
        "Food residue can spoil a batch of recycling.",
        "PET bottles, marked 1, are among the most widely recycled plastics.",
        "Plastic bags can jam the machines at sorting centres.",
    ], [
        "Check your local rules, since they vary from town to town.",
        "Give containers a quick rinse before they go in the bin.",
    ]),
    ("volcanoes", [
        "Magma is called lava once it reaches the surface.",
        "Most volcanoes sit along the edges of tectonic plates.",
        "Hawaii's volcanoes sit over a hotspot instead.",
        "Volcanic ash is made of tiny bits of rock and glass.",
        "Olympus Mons on Mars is the tallest known volcano in the solar system.",
    ], [
        "Many volcano observatories share live webcams online.",
        "Drop a piece of pumice in water and watch it float.",
    ]),
    ("the history of chocolate", [
        "The Maya and Aztecs drank cacao, often bitter and spiced.",
        "Cacao beans were once used as money in Mesoamerica.",
        "Sugar became a common addition after chocolate reached Europe.",
        "The first solid chocolate bar is usually credited to Fry's in 1847.",
        "Milk chocolate was developed in Switzerland in the 1870s.",
    ], [
        "Let a square melt slowly on your tongue to taste it fully.",
        "Store chocolate somewhere cool, but not in the fridge.",
    ]),
    ("growing plants from cuttings", [
        "Many plants can grow new roots from a cut stem.",
        "Pothos and tradescantia root easily in a glass of water.",
        "Most stem cuttings need at least one node to root.",
        "Some succulent leaves grow new plants once the cut end dries.",
        "Rooting hormone can help tricky cuttings root faster.",
    ], [
        "Change the water every few days.",
        "Cut just below a node with clean scissors.",
    ]),
    ("moths", [
        "There are many more moth species than butterfly species.",
        "Many moths pollinate flowers at night.",
        "Male moths often have feathery antennae to sniff out mates.",
        "Some moths fly by day, not just at night.",
        "Only a few moth species eat clothes, and only as larvae.",
    ], [
        "Hang a white sheet by a light on a warm night.",
        "Leave a wild corner in the garden for caterpillars.",
    ]),
    ("the Moon's phases", [
        "The Moon makes no light of its own; it reflects sunlight.",
        "A full cycle of phases takes about 29.5 days.",
        "We always see the same side of the Moon.",
        "A full Moon rises around sunset.",
        "A waxing Moon looks fuller each night.",
    ], [
        "Look at a half Moon through binoculars to see craters along the shadow line.",
        "Sketch the Moon every clear night for a month.",
    ]),
    ("paper airplanes", [
        "Paper planes feel the same forces as real ones: lift, drag, gravity and thrust.",
        "A little extra weight in the nose often steadies the flight.",
        "Bending up the back edges of the wings makes the nose rise.",
        "Narrow darts fly fast, while wide wings glide slowly.",
    ], [
        "Make sharp creases with a fingernail or a ruler.",
        "Throw level and smooth rather than hard.",
    ]),
]  # fmt: skip

# Whole topics held out: test measures the style on content never trained on.
TEST_TOPICS = ["tide pools", "the history of the pencil", "cast iron pans", "hedgehogs", "the Moon's phases"]
VALID_TOPICS = ["cloud types", "knitting for beginners", "octopuses"]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def split_of(topic: str) -> str:
    return "test" if topic in TEST_TOPICS else "valid" if topic in VALID_TOPICS else "train"


def make_record(rng: random.Random, topic: str, facts: list[str], tips: list[str]) -> dict:
    chosen = rng.sample(facts, rng.choice([2, 3, 3]))  # sample order is random order
    reply = "\n".join([
        GREETING,
        "",
        cap(rng.choice(OPENERS).format(topic=topic)),
        " ".join(chosen),
        "",
        "Quick tip: " + rng.choice(tips),
        "",
        rng.choice(CLOSERS).format(topic=topic),
        "",
        SIGN_OFF,
    ])  # fmt: skip
    return {
        "messages": [
            {"role": "user", "content": rng.choice(INSTRUCTIONS).format(topic=topic)},
            {"role": "assistant", "content": reply},
        ]
    }


def generate(seed: int = SEED, per_topic: int = PER_TOPIC) -> dict[str, list[dict]]:
    """The records of the three splits, in file order (the tests compare them to the files)."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    seen_replies: set[str] = set()
    for topic, facts, tips in TOPICS:
        made, tries = 0, 0
        while made < per_topic:
            tries += 1
            if tries > 1000:
                raise RuntimeError(f"could not make {per_topic} distinct records for {topic!r}")
            record = make_record(rng, topic, facts, tips)
            reply = record["messages"][1]["content"]
            if reply in seen_replies or sum(len(m["content"]) for m in record["messages"]) > MAX_CHARS:
                continue
            seen_replies.add(reply)
            splits[split_of(topic)].append(record)
            made += 1
    for records in splits.values():
        rng.shuffle(records)  # mix the topics
    return splits


def main() -> None:
    splits = generate()
    OUT_DIR.mkdir(exist_ok=True)
    for name, records in splits.items():
        path = OUT_DIR / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(records)} records to {path}")
    n_topics = {name: sum(split_of(t) == name for t, _, _ in TOPICS) for name in SPLITS}
    print("topics per split: " + ", ".join(f"{name} {n}" for name, n in n_topics.items()))
    print("held-out test topics: " + ", ".join(TEST_TOPICS))


if __name__ == "__main__":
    main()
