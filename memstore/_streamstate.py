"""``BatchStream.state_dict()`` and ``load_state_dict()``: a few scalars that resume an epoch anywhere.

A state records the epoch and its *global position*: blocks consumed by all
ranks together. The fingerprint lists what fixes the epochs' global
sequences -- not the shard, so a state loads at any world size (elastic
resume, :mod:`memstore.order`). Format 1 (no ``"format"`` key, from before
elastic resume) had the shard in its fingerprint and loads only at that shard.
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError

__all__ = ["STATE_FORMAT", "fingerprint", "fingerprint_v1", "state_of", "resume_point"]

#: version of ``state_dict()``; a state without ``"format"`` is format 1 (same shard only)
STATE_FORMAT = 2


def fingerprint(s) -> list:
    """What fixes the epochs' global sequences of stream ``s`` (the shard does not)."""
    return [len(s.block_file), s.batch_size, s.time_context, s.step, s.split, s.valid_fraction, s.shuffle,
            s.drop_last, s.out_of_core, s._window_rows, s.balance, str(s.store.path), s.store.generation]


def fingerprint_v1(s) -> list:
    """The format-1 fingerprint (before elastic resume), which included the shard."""
    return [len(s.block_file), s.batch_size, s.time_context, s.step, s.split, s.valid_fraction, s.shuffle,
            s.drop_last, list(s.shard or []), s.out_of_core, str(s.store.path), s.store.generation]


def state_of(s) -> dict:
    """``s.state_dict()``: after an epoch's last batch, the start of the next epoch."""
    if s.iteration_step >= s._n_batches(s._origin):
        epoch, position = s.epoch + 1, 0
    else:
        epoch = s.epoch
        position = s._origin + s.iteration_step * s.batch_size * s._world
    return {"format": STATE_FORMAT, "epoch": int(epoch), "position": int(position), "seed": s.seed,
            "shard": list(s.shard) if s.shard else None, "iteration_step": s.iteration_step,
            "fingerprint": fingerprint(s)}


def resume_point(s, state) -> tuple[int, int, int]:
    """``(epoch, origin, iteration_step)`` that ``state`` resumes stream ``s`` at, or a ``ParameterError``.

    ``origin`` is the global position where the epoch's dealing begins: 0 when the state's
    position is a step boundary of ``s``'s world size (the epoch's own dealing), else that position.
    """
    if not isinstance(state, dict):
        raise ParameterError(f"state must be a dict from state_dict(); got {type(state).__name__}")
    if "format" not in state:
        return _resume_point_v1(s, state)
    if state.get("format") != STATE_FORMAT:
        raise ParameterError(f"state_dict format {state.get('format')!r} is not supported "
                             f"(this memstore reads formats 1 and {STATE_FORMAT})")
    if state.get("fingerprint") != fingerprint(s) or state.get("seed") != s.seed:
        raise ParameterError("this state_dict belongs to a stream with other settings or another store")
    epoch, position = state.get("epoch"), state.get("position")
    n = len(s.block_file)
    for name, v, high in (("epoch", epoch, None), ("position", position, n)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0 or (high is not None and v > high):
            raise ParameterError(f"state_dict {name}={v!r} must be an integer in [0, {high or 'inf'}]")
    per_step = s.batch_size * s._world
    if position % per_step == 0:
        return int(epoch), 0, int(position) // per_step
    return int(epoch), int(position), 0


def _resume_point_v1(s, state: dict) -> tuple[int, int, int]:
    saved = state.get("fingerprint")
    if s.balance is not None:
        raise ParameterError("a format-1 state_dict (no 'format' key) predates balance= and cannot resume "
                             "a balanced stream")
    mine = fingerprint_v1(s)
    if (isinstance(saved, list) and len(saved) == 12 and state.get("seed") == s.seed
            and saved[8] != list(s.shard or []) and saved[:8] + saved[9:] == mine[:8] + mine[9:]):
        raise ParameterError(f"this format-1 state_dict (no 'format' key) was saved with shard="
                             f"{saved[8] or None} and loads only at that shard; load it there and save "
                             "it again to resume at another world size")
    if saved != mine or state.get("seed") != s.seed:
        raise ParameterError("this state_dict belongs to a stream with other settings or another store")
    return int(state["epoch"]), 0, int(state["iteration_step"])
