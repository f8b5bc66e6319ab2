"""Write a tiny CLAP model (random weights) with its processor to a folder, as ``save_pretrained`` does.

The tests, the offline quick start and the benchmarks load it through the same path a user's local
CLAP folder takes (``--audio-model DIR``). The tokenizer is a small byte-level BPE trained here (the
real RoBERTa tokenizer can't be downloaded offline). Random weights check the plumbing, not search
quality. ``--size base`` writes a random model with laion/clap-htsat-unfused's architecture instead,
for benchmarks that need the real model's cost.

    python scripts/make_tiny_clap.py OUT_DIR [--size tiny|base]
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

CORPUS = [
    "a dog barking in the distance", "glass shattering on a tiled floor", "rain on a tin roof",
    "waves breaking on a sandy beach", "a crowd cheering in a stadium", "birds singing at dawn",
    "a car engine starting", "footsteps on gravel", "a door slamming shut", "thunder rolling over hills",
    "a piano playing softly", "people talking in a busy cafe", "wind through pine trees",
    "a kettle whistling", "church bells ringing", "a baby laughing", "a train passing a crossing",
]


def _tokenizer(out_dir: Path, vocab_size: int) -> object:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok_dir = out_dir / "bpe"
    tok_dir.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(tok_dir))
    vocab, merges = str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")
    if "vocab" in inspect.signature(RobertaTokenizerFast.__init__).parameters:  # transformers 5
        return RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=77)
    return RobertaTokenizerFast(vocab_file=vocab, merges_file=merges, model_max_length=77)  # transformers 4


def make_clap(out_dir: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Returns the folder to pass as --audio-model."""
    import shutil

    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = 300 if size == "tiny" else 50265
    tokenizer = _tokenizer(out_dir, min(vocab, 1000))
    if size == "tiny":
        config = ClapConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2,  # type: ignore[arg-type]
                         "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 80,
                         "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
            audio_config={"hidden_size": 128, "patch_embeds_hidden_size": 16, "depths": [1, 1, 1, 1],
                          "num_attention_heads": [1, 1, 1, 1], "projection_dim": 48, "enable_fusion": False},
            projection_dim=48,
        )
    else:
        config = ClapConfig(text_config={"vocab_size": len(tokenizer)})  # type: ignore[arg-type]
    model = ClapModel(config).eval()
    extractor = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=10, truncation="rand_trunc",
                                     padding="repeatpad")
    processor = ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    shutil.rmtree(out_dir / "bpe")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    args = parser.parse_args()
    print(f"--audio-model {make_clap(args.out_dir, size=args.size)}")


if __name__ == "__main__":
    main()
