"""Write the alignment bank: short descriptions of sounds, scenes and objects, one per line.

Both text towers (CLIP's and CLAP's) embed every line; the least-squares map between the two sets of
vectors is the alignment that carries audio into the image space (see xmodal/search/align.py). The
bank is generated from hand-written word lists with fixed templates and a seeded shuffle, so that it is
reproducible; the committed file is the output of:

    python scripts/make_align_bank.py xmodal/data/align_bank.txt
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SOUNDS = [
    "a dog barking", "a cat meowing", "birds chirping", "a rooster crowing", "a cow mooing", "a horse neighing",
    "sheep bleating", "frogs croaking", "crickets chirping", "an owl hooting", "a lion roaring", "bees buzzing",
    "a wolf howling", "ducks quacking", "a crow cawing", "a seagull crying", "a pig grunting", "a goat bleating",
    "rain falling", "heavy rain on a roof", "thunder rumbling", "wind howling", "waves crashing", "a stream trickling",
    "a waterfall roaring", "a fire crackling", "leaves rustling", "hail hitting a window", "snow crunching underfoot",
    "a car engine revving", "a car horn honking", "a motorcycle passing", "a truck reversing beeper",
    "a train horn", "a train rattling on tracks", "an airplane flying overhead", "a helicopter hovering",
    "a siren wailing", "tires screeching", "a bicycle bell", "a bus pulling away", "a boat engine idling",
    "glass shattering", "a door slamming", "a door creaking open", "footsteps on wooden floor", "footsteps on gravel",
    "keys jingling", "a clock ticking", "an alarm clock ringing", "a phone ringing", "a doorbell chiming",
    "typing on a keyboard", "a mouse clicking", "paper rustling", "a zipper closing", "scissors cutting paper",
    "water pouring into a glass", "a kettle whistling", "a microwave beeping", "dishes clattering",
    "a blender whirring", "frying food sizzling", "a coffee machine gurgling", "a toilet flushing",
    "a shower running", "a vacuum cleaner humming", "a washing machine spinning", "a hair dryer blowing",
    "a hammer hitting nails", "a drill boring into wood", "a chainsaw cutting", "a saw cutting wood",
    "a lawn mower running", "construction machinery", "metal clanging", "a crowd cheering", "people applauding",
    "a baby crying", "a baby laughing", "children playing", "people talking in a cafe", "a man coughing",
    "a woman sneezing", "someone snoring", "someone whistling a tune", "a person laughing", "a whisper",
    "a choir singing", "a piano melody", "an acoustic guitar strumming", "an electric guitar solo", "a violin playing",
    "a cello playing a slow tune", "drums beating", "a trumpet fanfare", "a flute playing", "a saxophone solo",
    "church bells ringing", "wind chimes tinkling", "a gong being struck", "an orchestra tuning", "a harp being plucked",
    "an explosion", "fireworks bursting", "a gunshot echoing", "a balloon popping", "a ball bouncing",
    "a basketball dribbling", "a tennis ball being hit", "a referee whistle", "skateboard wheels rolling",
    "a cash register opening", "coins dropping", "a camera shutter clicking", "a printer printing",
    "a fan spinning", "an air conditioner humming", "an elevator chime", "an escalator running", "a vending machine",
]

SCENES = [
    "a busy city street", "a quiet forest", "a sandy beach", "a mountain trail", "a crowded train station",
    "an airport terminal", "a small kitchen", "a living room", "a bedroom at night", "an office",
    "a classroom", "a library", "a hospital corridor", "a supermarket", "a shopping mall", "a restaurant",
    "a cafe", "a bar at night", "a concert hall", "a football stadium", "a swimming pool", "a gym",
    "a farm", "a barn", "a garden", "a park", "a playground", "a parking garage", "a highway", "a bridge",
    "a harbour", "a boat on the sea", "a desert", "a snowy field", "a rainforest", "a river bank", "a lake at dawn",
    "a cave", "a factory floor", "a construction site", "a workshop", "a church", "a temple", "a museum",
    "a subway car", "a bus", "a car interior", "a tent in the woods", "a rooftop", "a backyard", "a street market",
    "a village square", "a castle", "a lighthouse", "a waterfall", "a volcano", "a field of flowers", "a vineyard",
]

OBJECTS = [
    "a red bicycle", "a wooden chair", "a leather sofa", "a glass vase", "a ceramic mug", "a silver spoon",
    "a laptop computer", "a smartphone", "a pair of headphones", "a wristwatch", "a digital camera",
    "a pair of running shoes", "a leather handbag", "a backpack", "a winter coat", "a wool sweater", "a baseball cap",
    "a pair of sunglasses", "a necklace", "a diamond ring", "a teddy bear", "a toy car", "a kite",
    "a soccer ball", "a tennis racket", "a skateboard", "a surfboard", "a guitar", "a piano", "a violin",
    "a drum kit", "a microphone", "a table lamp", "a ceiling fan", "a refrigerator", "a washing machine",
    "a toaster", "a kettle", "a frying pan", "a cutting board", "a kitchen knife", "a bowl of fruit",
    "a loaf of bread", "a cup of coffee", "a glass of wine", "a birthday cake", "a pizza", "a bowl of soup",
    "a bouquet of roses", "a potted plant", "a cactus", "an old book", "a notebook", "a fountain pen",
    "a pair of scissors", "a hammer", "a screwdriver", "an electric drill", "a ladder", "a garden hose",
    "a lawn mower", "a sports car", "a pickup truck", "a city bus", "a motorcycle", "a sailboat", "a fishing boat",
    "an airplane", "a helicopter", "a steam train", "a tractor", "a fire truck", "a police car", "an ambulance",
    "a golden retriever", "a black cat", "a white horse", "a brown cow", "a flock of sheep", "a parrot",
    "a duck", "an owl", "a goldfish", "a butterfly", "a honeybee", "a frog", "a snake", "a lion", "an elephant",
]

QUALITIES = ["loud", "quiet", "distant", "close-up", "echoing", "muffled", "rhythmic", "sudden", "continuous", "faint"]
LOOKS = ["old", "new", "small", "large", "shiny", "dusty", "broken", "colourful", "vintage", "modern"]

TEMPLATES = [
    "the sound of {sound}", "{sound}", "{quality} {sound}", "{sound} in {scene}", "recording of {sound} in {scene}",
    "{scene}", "ambient noise of {scene}", "a photo of {object}", "{object} in {scene}", "{look} {object}",
    "a photo of {look} {object} in {scene}", "{object} making a sound", "a picture of {scene}",
]


def generate(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    # every word-list entry on its own first, then templated combinations until n distinct lines
    for line in [*SOUNDS, *(f"the sound of {s}" for s in SOUNDS), *SCENES, *OBJECTS]:
        if line not in seen:
            seen.add(line)
            out.append(line)
    while len(out) < n:
        line = rng.choice(TEMPLATES).format(
            sound=rng.choice(SOUNDS), scene=rng.choice(SCENES), object=rng.choice(OBJECTS),
            quality=rng.choice(QUALITIES), look=rng.choice(LOOKS),
        )
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=2400)
    args = parser.parse_args()
    lines = generate(args.n)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} lines -> {args.out}")


if __name__ == "__main__":
    main()
