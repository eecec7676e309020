"""The trainer's command line: `python -m llm.train` and `pqrag train` (service/cli.py forwards its arguments here).

Precedence: options given on the command line > the --config TOML file > TrainConfig's defaults. Only options
actually given override the file (argparse.SUPPRESS), so a default here can never shadow a TOML value.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common.errors import InvalidArgumentError, PqragError
from llm.train.config import TrainConfig, config_from_dict, load_toml
from llm.train.distributed import is_main_process
from llm.train.loop import train


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.train",
        description="Train the pqrag MoE generator. Options override --config FILE.toml, which overrides defaults.",
    )
    S = argparse.SUPPRESS  # only options actually given override the TOML file
    p.add_argument("--config", default=None, help="TOML file of TrainConfig keys ([model] table for the model)")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=S, metavar="PATH", help="files/folders: .txt .md .jsonl .json .html")
    g.add_argument(
        "--from-collection",
        dest="from_collection",
        default=S,
        metavar="NAME",
        help="train on the documents of this pqrag collection",
    )
    g.add_argument("--data-dir", dest="data_dir", default=S, help="pqrag data directory of --from-collection")
    g.add_argument(
        "--pydoc", action="store_true", default=S, help="train on Python's docs (pydoc_data topics + stdlib docstrings)"
    )
    g.add_argument("--tokenizer", default=S, help="reuse this tokenizer.json instead of training a BPE")
    g.add_argument("--vocab-size", dest="vocab_size", type=int, default=S, help="BPE vocabulary to train")
    g.add_argument("--out", default=S, help="output directory (default out/train)")
    g = p.add_argument_group("model and schedule")
    g.add_argument("--preset", default=S, help="model preset: tiny, small (default), small-dense")
    g.add_argument(
        "--init-from",
        dest="init_from",
        default=S,
        metavar="DIR",
        help="fine-tune: start from this exported model's weights and tokenizer (fresh optimizer, step 0)",
    )
    g.add_argument(
        "--model",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="ModelConfig override, e.g. --model num_experts=1 (repeatable)",
    )
    g.add_argument("--seq-len", dest="seq_len", type=int, default=S)
    g.add_argument(
        "--train-on-prompt",
        dest="train_on_prompt",
        action="store_true",
        default=S,
        help="chat records: train on every token, not only the assistant's turns",
    )
    g.add_argument("--batch-size", dest="batch_size", type=int, default=S, help="sequences per micro-step (global)")
    g.add_argument("--grad-accum", dest="grad_accum", type=int, default=S)
    g.add_argument("--max-steps", dest="max_steps", type=int, default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=S)
    g.add_argument("--lr-decay-steps", dest="lr_decay_steps", type=int, default=S)
    g.add_argument("--aux-loss-coef", dest="aux_loss_coef", type=float, default=S)
    g.add_argument("--z-loss-coef", dest="z_loss_coef", type=float, default=S)
    g.add_argument("--eval-interval", dest="eval_interval", type=int, default=S)
    g.add_argument("--eval-batches", dest="eval_batches", type=int, default=S)
    g.add_argument("--checkpoint-interval", dest="checkpoint_interval", type=int, default=S)
    g.add_argument("--sample-tokens", dest="sample_tokens", type=int, default=S)
    g = p.add_argument_group("parallelism (torchrun)")
    g.add_argument("--fsdp", action="store_true", default=S, help="FSDP2: shard params, grads, optimizer state")
    g.add_argument(
        "--expert-parallel",
        dest="expert_parallel",
        type=int,
        default=S,
        metavar="N",
        help="shard each MoE layer's experts over groups of N ranks (all-to-all token dispatch)",
    )
    g.add_argument(
        "--activation-checkpointing",
        dest="activation_checkpointing",
        action="store_true",
        default=S,
        help="recompute each block's activations in the backward",
    )
    g = p.add_argument_group("system")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--dtype", default=S, choices=["auto", "fp32", "bf16"])
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads (0: torch's default)")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--resume", action="store_true", default=S, help="continue from OUT/checkpoint.pt")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress bar")
    return p


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)  # 4 -> int, 1e-3 -> float, true -> bool
    except json.JSONDecodeError:
        return text


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_arg_parser().parse_args(argv))
    path = args.pop("config")
    base = load_toml(path).to_dict() if path else {}
    if "model" in args:  # ["k=v", ...] merged over the TOML [model] table
        model = dict(base.get("model", {}))
        for item in args.pop("model"):
            if "=" not in item:
                raise InvalidArgumentError(f"--model expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            model[k.strip()] = _parse_value(v.strip())
        args["model"] = model
    return config_from_dict({**base, **args}, where="command line")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        summary = train(cfg)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume (from the last checkpoint)", file=sys.stderr)
        return 130
    except (ValueError, PqragError) as exc:  # bad input (CorpusError included), reported without a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_main_process():
        print(json.dumps(summary))
    return 0
