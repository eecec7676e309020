"""Train the MoE generator (or a dense baseline) from text: tokenizer, shards, AdamW loop, eval, checkpoints, export.

    python -m llm.train --data docs/ notes.jsonl --out out/run1                 # laptop CPU defaults (preset small)
    python -m llm.train --pydoc --out out/pydoc --max-steps 1000                 # the demo generator (demo_config)
    python -m llm.train --config train.toml --out out/run1 --resume              # continue after an interruption
    python -m llm.train --init-from out/pydoc --data sft.jsonl --out out/sft     # fine-tune an exported model
    torchrun --nproc_per_node 4 -m llm.train --data corpus/ --out out/ddp        # DDP, one process per GPU
    torchrun --nproc_per_node 8 -m llm.train ... --expert-parallel 8 --fsdp      # experts and FSDP shards per rank
    pqrag train ...                                                              # the same, from the service CLI

Outputs in --out: tokenizer.json (+ tokenizer_config.json), data/{train,val}.bin token shards, checkpoint.pt
(model, optimizer, schedule, data position, RNG states; replaced atomically; checkpoint/step-N/ for a sharded
run), metrics.jsonl (one line per step),
loss.png, and at the end config.json + model.safetensors in Hugging Face Mixtral layout, so the directory loads with
`llm.checkpoint.load_model(out)` and with `transformers.AutoModelForCausalLM.from_pretrained(out)`.

The modules, in the order a run meets them:

    cli.py            the command line (argparse over TOML over defaults) and main()
    config.py         TrainConfig: every default and every check of a value; TOML loading; demo_config
    model_init.py     the model to train: a preset with overrides, or an exported model to fine-tune (--init-from)
    corpus.py         where text comes from: files, a pqrag collection, Python's docs; ChatRecord; the fingerprint
    dataset.py        the run's tokenizer (reused or trained) and shards, prepared once by rank 0
    shards.py         token shards on disk: per-document split, chat alignment, loss masks, the cache key
    sampler.py        the order sequences are drawn in, resumable from one integer
    distributed.py    ranks, devices, collectives, and how the model is wrapped for the world (DDP)
    parallel_dims.py  the layout (dp x ep mesh, FSDP) checked before any work
    parallelize.py    Parallelism: the model laid out over the ranks, gradients synced, clipped and gathered
    expert_parallel.py  each MoE layer's experts sliced per rank, tokens dispatched and combined by all-to-all
    fsdp.py           FSDP2 units per block and root (bf16 parameters, fp32 reduction on CUDA)
    activation_checkpointing.py  each block recomputed in the backward
    optim.py          AdamW parameter groups and the warm-up + cosine schedule
    loss.py           cross-entropy + load-balancing + router z-loss, equal on 1 and N processes
    evaluation.py     validation loss and a greedy sample
    metrics.py        metrics.jsonl, the progress bar, loss.png
    checkpointing.py  checkpoint.pt: save atomically, check, restore bit for bit (or reshard into another layout)
    sharded_checkpoint.py  checkpoint/step-N/ through torch.distributed.checkpoint: any layout resumes any other
    loop.py           train(): plan -> set up -> steps -> export
"""

from llm.train.cli import build_arg_parser, main, parse_config
from llm.train.config import TrainConfig, config_from_dict, demo_config, load_toml
from llm.train.corpus import ChatRecord, CorpusError, file_texts
from llm.train.loop import train, train_demo_generator
from llm.train.metrics import read_metrics

__all__ = [
    "ChatRecord",
    "CorpusError",
    "TrainConfig",
    "build_arg_parser",
    "config_from_dict",
    "demo_config",
    "file_texts",
    "load_toml",
    "main",
    "parse_config",
    "read_metrics",
    "train",
    "train_demo_generator",
]
