"""Write a tiny open_clip architecture config and a random-weights checkpoint for it.

The tests, the offline quick start and the benchmarks load it through the same path a user's
checkpoint takes (``--clip-model CONFIG.json --clip-pretrained CHECKPOINT``). Random weights check
the plumbing, not search quality. ``--arch ViT-B-32`` writes a full-size random ViT-B-32 instead, for
benchmarks that need the real model's cost.

    python scripts/make_tiny_clip.py OUT_DIR [--arch ViT-B-32] [--format pt|safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_clip(out_dir: Path, *, arch: str = "tiny", fmt: str = "pt", seed: int = 0) -> tuple[Path, Path]:
    """Returns (model argument, checkpoint path) for --clip-model / --clip-pretrained."""
    import open_clip
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if arch == "tiny":
        config = out_dir / "xmodal-tiny-clip.json"
        config.write_text(json.dumps(TINY_CONFIG, indent=2))
        open_clip.add_model_config(config)
        model_arg, name = str(config), config.stem
    else:
        model_arg = name = arch
    model = open_clip.create_model(name, pretrained=None)
    state = model.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        ckpt = out_dir / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    else:
        ckpt = out_dir / f"{name}.pt"
        torch.save(state, ckpt)
    return Path(model_arg), ckpt


def main() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that it starts from random weights: we know
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", default="tiny", help="'tiny' or an open_clip architecture such as ViT-B-32")
    parser.add_argument("--format", default="pt", choices=["pt", "safetensors"])
    args = parser.parse_args()
    model_arg, ckpt = make_clip(args.out_dir, arch=args.arch, fmt=args.format)
    print(f"--clip-model {model_arg} --clip-pretrained {ckpt}")


if __name__ == "__main__":
    main()
