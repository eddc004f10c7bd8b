"""Synthetic-data subcommands: `cogvlm synth-data`, `init-model` and `eval-synthetic`."""

from __future__ import annotations

import argparse

from cogvlm.cli.common import add_model_arguments, flag_dtype, load_session
from cogvlm.embedded import EMBEDDED_NAME
from cogvlm.train.synthetic import EMBEDDED_SCENE


def run_synth_data(args: argparse.Namespace) -> int:
    """Write a synthetic dataset (images, training JSONL and scoring JSONL)."""
    from cogvlm.train.synthetic import DatasetConfig, SceneConfig, write_dataset

    scene = SceneConfig(
        image_px=args.image_px,
        font_px=args.font_px,
        min_object_px=args.min_object_px,
        max_object_px=args.max_object_px,
    )
    print(write_dataset(args.output, DatasetConfig(num_images=args.images, seed=args.seed, scene=scene)))
    return 0


def add_synth_data_parser(commands) -> None:
    """`cogvlm synth-data`."""
    synth = commands.add_parser(
        "synth-data", help="generate shapes-and-text images with questions and answers"
    )
    synth.add_argument("output", help="directory to write")
    synth.add_argument("--images", type=int, required=True)
    synth.add_argument("--seed", type=int, required=True)
    scene = EMBEDDED_SCENE  # defaults: the embedded model's scenes
    synth.add_argument("--image_px", type=int, default=scene.image_px)
    synth.add_argument("--font_px", type=int, default=scene.font_px)
    synth.add_argument("--min_object_px", type=int, default=scene.min_object_px)
    synth.add_argument("--max_object_px", type=int, default=scene.max_object_px)
    synth.set_defaults(handler=run_synth_data)


def _task_weights(values: list[str]) -> dict[str, float]:
    from cogvlm.errors import CogVLMError

    weights = {}
    for value in values:
        task, _, weight = value.partition("=")
        try:
            weights[task] = float(weight)
        except ValueError:
            raise CogVLMError(f"--weight {value!r}: expected TASK=NUMBER, e.g. grounding=2") from None
    return weights


def run_mix_data(args: argparse.Namespace) -> int:
    """Write a re-weighted training JSONL of a synthetic dataset; prints the samples per task."""
    import json

    from cogvlm.errors import CogVLMError
    from cogvlm.train.synthetic import mix_tasks
    from cogvlm.train.synthetic_dialogue import dialogue_extras

    try:
        extra = dialogue_extras(args.data, args.unanswerable, args.multi_turn, args.seed)
        output, counts = mix_tasks(args.data, _task_weights(args.weight), args.output, args.seed, extra)
    except ValueError as error:
        raise CogVLMError(str(error)) from None
    print(json.dumps({"output": str(output), "samples": counts}))
    return 0


def add_mix_data_parser(commands) -> None:
    """`cogvlm mix-data`."""
    mix = commands.add_parser("mix-data", help="a training JSONL that repeats or thins tasks of a dataset")
    mix.add_argument("data", help="dataset written by `cogvlm synth-data`")
    mix.add_argument("--output", required=True, help="JSONL file to write")
    mix.add_argument("--weight", action="append", default=[], help="TASK=NUMBER (repeatable; default 1)")
    mix.add_argument("--seed", type=int, default=0)
    mix.add_argument(
        "--unanswerable", type=int, default=0, help="add this many off-topic questions with the honest reply"
    )
    mix.add_argument("--multi_turn", type=int, default=0, help="add this many questions after earlier turns")
    mix.set_defaults(handler=run_mix_data)


def run_dialogue_data(args: argparse.Namespace) -> int:
    """Write a scoring set of off-topic and multi-turn questions about a synthetic dataset's images."""
    from cogvlm.train.synthetic_dialogue import write_dialogue_set

    print(write_dialogue_set(args.data, args.output, args.unanswerable, args.multi_turn, args.seed))
    return 0


def add_dialogue_data_parser(commands) -> None:
    """`cogvlm dialogue-data`."""
    dialogue = commands.add_parser(
        "dialogue-data", help="a test set of off-topic and multi-turn questions (eval-synthetic scores it)"
    )
    dialogue.add_argument("data", help="dataset written by `cogvlm synth-data` (its images are used)")
    dialogue.add_argument("--output", required=True, help="directory to write tasks.jsonl into")
    dialogue.add_argument("--unanswerable", type=int, default=300)
    dialogue.add_argument("--multi_turn", type=int, default=300)
    dialogue.add_argument("--seed", type=int, required=True)
    dialogue.set_defaults(handler=run_dialogue_data)


def run_init_model(args: argparse.Namespace) -> int:
    """Train a tokenizer on a synthetic dataset and write a randomly initialised checkpoint with it."""
    import tempfile
    from pathlib import Path

    from cogvlm.models.presets import preset
    from cogvlm.train.init_model import init_checkpoint
    from cogvlm.train.synthetic import corpus
    from cogvlm.train.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab = preset(args.preset).llm.vocab_size
        tokenizer = train_tokenizer(corpus(args.data), Path(scratch) / "tokenizer.model", vocab)
        print(init_checkpoint(args.preset, tokenizer, args.output, seed=args.seed))
    return 0


def add_init_model_parser(commands) -> None:
    """`cogvlm init-model`."""
    init = commands.add_parser("init-model", help="a random-weight checkpoint and a tokenizer for a dataset")
    init.add_argument("output", help="checkpoint directory to write")
    init.add_argument("--preset", default="embedded-cogvlm")
    init.add_argument("--data", required=True, help="synthetic dataset whose text trains the tokenizer")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(handler=run_init_model)


def run_eval_synthetic(args: argparse.Namespace) -> int:
    """Score a model on a synthetic dataset, per task; prints JSON."""
    import json

    from cogvlm.train.synthetic_eval import evaluate, session_answerer

    session = load_session(args, dtype=flag_dtype(args), quant_bits=args.quant)
    answer = session_answerer(session, args.max_new_tokens)
    scores = evaluate(answer, args.data, session.config.vision.image_px, per_task=args.per_task)
    report = {
        task: {"total": s.total, "correct": s.correct, "accuracy": round(s.accuracy, 4)}
        for task, s in scores.items()
    }
    print(json.dumps(report, indent=2))
    return 0


def add_eval_synthetic_parser(commands) -> None:
    """`cogvlm eval-synthetic`."""
    evaluate = commands.add_parser("eval-synthetic", help="score a model per task on a synthetic dataset")
    add_model_arguments(evaluate, default_checkpoint=EMBEDDED_NAME)
    evaluate.add_argument("--data", required=True, help="dataset written by `cogvlm synth-data`")
    evaluate.add_argument("--per_task", type=int, default=None, help="at most this many samples per task")
    evaluate.add_argument("--max_new_tokens", type=int, default=32)
    evaluate.add_argument("--quant", type=int, choices=(4, 8), default=None, help="int4/int8 weights")
    evaluate.set_defaults(handler=run_eval_synthetic)
