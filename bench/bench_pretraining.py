"""Benchmark: chapter 2's text BERT pretraining (masked LM on Beauty's item texts): tokens/s, FLOPs per token and
model FLOP utilisation (MFU) against the device's dense bf16 peak.

FLOPs per trained token follow the usual accounting (Kaplan et al. 2020; PaLM's appendix B): 6 x the non-embedding
parameters (forward 2, backward 4), plus attention's scores and weighted sums, 12 x layers x hidden x the mean padded
sequence length, plus the vocabulary projection of the masked-LM head, 6 x hidden x vocabulary for the 15% of tokens
that are masked (chapter 2 projects only those). MFU = tokens/s x FLOPs per token / peak; the peak is the vendor's
dense bf16 figure for known GPUs, and none is claimed for CPUs. Writes bench/results/pretraining-{device}.json.

    python bench/bench_pretraining.py [--epochs 3] [--smoke] [--dataset beauty] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import atomic_write, load_dataset
from recbook.evaluation import default_device
from recbook.pretraining import FULL_CONFIG, SMOKE_CONFIG, build_text_bert, pretrain_text_bert, train_tokenizer

# dense bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets (SXM parts)
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "T4": 65e12}  # first match wins: the longer names come first
MASKED_SHARE = 0.15  # chapter 2's masking probability


def flops_per_token(config, vocab_size: int, mean_padded_length: float) -> dict:
    "Training FLOPs per real token of a BERT of `config`, by part."
    model = build_text_bert(replace(config, vocab_size=vocab_size))
    dense = sum(p.numel() for n, p in model.named_parameters() if n.startswith("bert.encoder."))  # every token
    # the head (a hidden x hidden transform, then the vocabulary projection tied to the input embeddings) runs on the
    # masked tokens only
    parts = {"dense": 6 * dense, "attention": 12 * config.layers * config.hidden * mean_padded_length,
             "masked-LM head": 6 * MASKED_SHARE * (config.hidden * config.hidden + config.hidden * vocab_size)}
    return {**parts, "total": sum(parts.values()), "non_embedding_parameters": dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="chapter 2's small configuration")
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--out", help="record file (default bench/results/pretraining-{device}.json)")
    args = parser.parse_args()
    device = default_device()
    texts = load_dataset(args.dataset).items["text"].tolist()
    config = replace(SMOKE_CONFIG if args.smoke else FULL_CONFIG, epochs=args.epochs)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]]
    _, history = pretrain_text_bert(texts, tokenizer, config, device)
    # batches are padded to their longest text: the attention term uses the mean padded length of shuffled batches
    shuffled = [lengths[i] for i in torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
    mean_padded = statistics.mean(max(shuffled[i:i + config.batch_size]) for i in range(0, len(shuffled), config.batch_size))
    flops = flops_per_token(config, len(tokenizer), mean_padded)
    steady = history["tokens_per_s"].iloc[1:] if len(history) > 1 else history["tokens_per_s"]  # epoch 1 warms up
    tokens_per_s = float(steady.median())
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else ""
    peak = next((value for key, value in BF16_PEAK.items() if key in name), None)
    achieved = tokens_per_s * flops["total"]
    record = {"benchmark": "text BERT pretraining (masked LM)", "dataset": args.dataset, "config": asdict(config),
              "tokens_per_s": tokens_per_s, "flops_per_token": flops, "achieved_tflops": achieved / 1e12,
              "peak_bf16_tflops": peak / 1e12 if peak else None, "mfu": achieved / peak if peak else None,
              "seconds_per_epoch": float(history["seconds"].median()),
              "valid_perplexity_last": float(history["valid_perplexity"].iloc[-1]),
              "history": history.reset_index().to_dict(orient="list"), **provenance(device)}
    out = Path(args.out) if args.out else RESULTS / f"pretraining-{device.type}.json"
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"{describe(device)}: {tokens_per_s:,.0f} tokens/s, {flops['total'] / 1e6:.2f} MFLOPs per token "
          f"({', '.join(f'{k} {v / 1e6:.2f}' for k, v in flops.items() if k not in ('total', 'non_embedding_parameters'))}), "
          f"{achieved / 1e12:.3f} TFLOP/s" + (f", MFU {achieved / peak:.2%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak
                                              else ", MFU: no peak claimed for this device"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
