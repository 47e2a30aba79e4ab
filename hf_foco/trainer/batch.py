"""The global batch a recipe states, and the gradient accumulation that gives it on any number of processes.

A pretraining recipe's batch is a number of tokens per optimizer step (GPT-2 small: 2**19 = 524,288, as in
llm.c and build-nanogpt). What one process can hold is ``per_device_train_batch_size`` sequences of
``block_size`` tokens; the rest comes from data parallelism and accumulation:

    tokens_per_step = processes x per_device_train_batch_size x block_size x gradient_accumulation_steps

so a recipe that states ``tokens_per_step`` trains the same batch on 1, 2 or 8 GPUs: the job derives the
accumulation from the world size it was launched with (a fixed accumulation would multiply the batch by
the number of GPUs). A batch that does not divide is refused, naming the numbers and the per-device batch
sizes that would divide it. Whatever script sets ``--tokens_per_step``, ``FocoTrainer`` checks the first
micro-batch against it (:func:`check_tokens_per_step`), so the stated batch is the one trained.
"""

from __future__ import annotations


def derive_accumulation(args, block_size: int) -> None:
    """Set ``args.gradient_accumulation_steps`` from ``args.tokens_per_step`` (a no-op when that is unset).

    ``args`` is a :class:`~hf_foco.trainer.FocoTrainingArguments` (its ``world_size`` is the number of
    processes of the launch). An explicit accumulation other than 1 must agree with the derived one.
    """
    tokens = args.tokens_per_step
    if tokens is None:
        return
    world, per_device = args.world_size, args.per_device_train_batch_size
    if tokens < 1:
        raise ValueError(f"--tokens_per_step {tokens}: it must be a positive number of tokens per optimizer step.")
    round_tokens = world * per_device * block_size  # one micro-batch on every process
    if tokens % round_tokens:
        fits = [b for b in range(per_device, 0, -1) if tokens % (world * b * block_size) == 0]
        hint = (f"--per_device_train_batch_size {fits[0]} divides it" if fits else
                f"no per-device batch divides it with --block_size {block_size} on {world} process(es)")
        raise ValueError(f"--tokens_per_step {tokens} is not a multiple of {world} process(es) x "
                         f"{per_device} sequences x {block_size} tokens = {round_tokens} tokens per micro-batch on "
                         f"every process: {hint}; or pass a --tokens_per_step that is a multiple of {round_tokens}.")
    steps = tokens // round_tokens
    if args.gradient_accumulation_steps not in (1, steps):
        raise ValueError(f"--gradient_accumulation_steps {args.gradient_accumulation_steps} contradicts "
                         f"--tokens_per_step {tokens}, which needs {steps} on {world} process(es) x {per_device} "
                         f"sequences x {block_size} tokens: drop --gradient_accumulation_steps (it is derived).")
    args.gradient_accumulation_steps = steps


def check_tokens_per_step(args, inputs: dict) -> None:
    """Refuse to train when ``args.tokens_per_step`` is set and a micro-batch of ``inputs`` (this process's
    ``input_ids``) does not add up to it over the processes and the accumulation steps."""
    tokens, ids = getattr(args, "tokens_per_step", None), inputs.get("input_ids")
    if tokens is None or ids is None:
        return
    sequences, length = ids.shape[0], ids.shape[-1]
    trained = args.world_size * sequences * length * args.gradient_accumulation_steps
    if trained != tokens:
        raise ValueError(f"--tokens_per_step {tokens}, but each optimizer step trains {args.world_size} process(es) x "
                         f"{sequences} sequences x {length} tokens x {args.gradient_accumulation_steps} accumulation "
                         f"steps = {trained} tokens. The pretraining job (hf-foco train, scripts/run_pretrain.py) "
                         "derives the accumulation from --tokens_per_step; elsewhere set --gradient_accumulation_steps "
                         "to match it, or drop --tokens_per_step.")
