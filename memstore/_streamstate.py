"""``BatchStream.state_dict()`` and ``load_state_dict()``: what is left of an epoch, at any world size.

A state (format 3) records the epoch and its *unserved set*: the positions of
the epoch's global sequence that no rank has served yet, as ``[lo, hi)``
intervals (:mod:`memstore.order`). All ranks take the same number of steps, so
the state does not depend on the rank that saves it. The fingerprint lists
what fixes the epochs' global sequences -- not the shard, so a state loads at
any world size (elastic resume). Format 2 (a global position ``P``: the prefix
consumed under the earlier round-robin dealing) loads as the unserved set
``[(P, n)]``. Format 1 (no ``"format"`` key, from before elastic resume) had
the shard in its fingerprint and loads only at that shard (its steps were
taken under round-robin dealing, so it too loads as a consumed prefix). A
balanced stream's fingerprint names its draw (``"class/select"``): a balanced
state saved before the draw became selection sampling names ``"class"`` and is
refused with that reason part way through an epoch, since its epochs were other
multisets of blocks; at an epoch's start (position 0) it loads, and that epoch
is drawn anew.
"""

from __future__ import annotations

import numpy as np

from ._validate import int_at_least
from .errors import ParameterError
from .order import intervals, remaining

__all__ = ["STATE_FORMAT", "fingerprint", "fingerprint_v1", "state_of", "resume_point"]

#: version of ``state_dict()``; a state without ``"format"`` is format 1 (same shard only)
STATE_FORMAT = 3
#: what a balanced stream's fingerprint names its draw: ``"class"`` alone was the draw before selection
#: sampling (``rng.choice`` per class), whose epochs are other multisets of blocks
BALANCE_DRAW = {"class": "class/select"}
#: where the fingerprint holds the balance
_BALANCE_AT = 10


def fingerprint(s) -> list:
    """What fixes the epochs' global sequences of stream ``s`` (the shard does not)."""
    return [len(s.block_file), s.batch_size, s.time_context, s.step, s.split, s.valid_fraction, s.shuffle,
            s.drop_last, s.out_of_core, s._window_rows, BALANCE_DRAW.get(s.balance, s.balance), str(s.store.path),
            s.store.generation]


def fingerprint_v1(s) -> list:
    """The format-1 fingerprint (before elastic resume), which included the shard."""
    return [len(s.block_file), s.batch_size, s.time_context, s.step, s.split, s.valid_fraction, s.shuffle,
            s.drop_last, list(s.shard or []), s.out_of_core, str(s.store.path), s.store.generation]


def state_of(s, steps=None) -> dict:
    """``s.state_dict()``; after an epoch's last batch, the start of the next epoch.

    ``steps``: the steps each of the ``world`` ranks (sub-shards) of ``s`` has taken of its chunk
    (default ``s.iteration_step`` for all, as ranks in lockstep take).
    """
    n, world = len(s.block_file), s._world
    steps = [s.iteration_step] * world if steps is None else list(steps)
    whole = intervals(None, n)
    if min(steps) >= s._n_batches(s._unserved):
        epoch, left = s.epoch + 1, whole
    else:
        epoch = s.epoch
        unserved = whole if s._unserved is None else s._unserved
        per = s._order.per_rank(world, unserved)
        left = remaining(unserved, world, [min(k * s.batch_size, per) for k in steps])
    return {"format": STATE_FORMAT, "epoch": int(epoch), "position": int(n - (left[:, 1] - left[:, 0]).sum()),
            "remaining": left.tolist(), "seed": s.seed, "fingerprint": fingerprint(s)}


def resume_point(s, state) -> tuple[int, np.ndarray | None, int]:
    """``(epoch, unserved, iteration_step)`` that ``state`` resumes stream ``s`` at, or a ``ParameterError``.

    ``unserved`` is None (the epoch's own dealing, resumed at step ``iteration_step``) when the state
    is what ``s``'s world size leaves after whole steps of a fresh epoch; else the set to deal.
    """
    if not isinstance(state, dict):
        raise ParameterError(f"state must be a dict from state_dict(); got {type(state).__name__}")
    if "format" not in state:
        return _resume_point_v1(s, state)
    if state.get("format") not in (2, STATE_FORMAT):
        raise ParameterError(f"state_dict format {state.get('format')!r} is not supported "
                             f"(this memstore reads formats 1 to {STATE_FORMAT})")
    saved, mine = state.get("fingerprint"), fingerprint(s)
    if (s.balance is not None and isinstance(saved, list) and len(saved) == len(mine)
            and saved[_BALANCE_AT] == s.balance  # a balanced state saved before the draw was named
            and saved[:_BALANCE_AT] + saved[_BALANCE_AT + 1:] == mine[:_BALANCE_AT] + mine[_BALANCE_AT + 1:]
            and state.get("seed") == s.seed):
        if state.get("position") != 0:
            raise ParameterError(f"this state_dict was saved by an earlier memstore, whose balance={s.balance!r} "
                                 "drew other blocks for each epoch: this one cannot resume that epoch's draw part "
                                 "way (no block twice, none lost); start the stream afresh")
        saved = mine  # at an epoch's start nothing of the old draw was served: the epoch starts with this one
    if saved != mine or state.get("seed") != s.seed:
        raise ParameterError("this state_dict belongs to a stream with other settings or another store")
    epoch, position = state.get("epoch"), state.get("position")
    n = len(s.block_file)
    for name, v, high in (("epoch", epoch, None), ("position", position, n)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0 or (high is not None and v > high):
            raise ParameterError(f"state_dict {name}={v!r} must be an integer in [0, {high or 'inf'}]")
    if state["format"] == 2:  # a consumed prefix (round-robin dealing)
        unserved = intervals([[int(position), n]], n)
    else:
        unserved = intervals(state.get("remaining"), n)
        if n - int((unserved[:, 1] - unserved[:, 0]).sum()) != position:
            raise ParameterError(f"state_dict position={position!r} does not match its remaining positions")
    return (int(epoch),) + _as_steps(s, unserved)


def _as_steps(s, unserved: np.ndarray) -> tuple[np.ndarray | None, int]:
    """``(None, k)`` if ``unserved`` is what ``k`` steps leave of a fresh epoch at ``s``'s world size.

    Otherwise ``(unserved, 0)``: the set is dealt anew from step 0.
    """
    n, world, size = len(s.block_file), s._world, s.batch_size
    whole = intervals(None, n)
    if np.array_equal(unserved, whole):
        return None, 0
    if len(unserved) and unserved[0, 0] % size == 0:
        k = int(unserved[0, 0]) // size
        per = s._order.per_rank(world)
        if 0 < k < s._n_batches(None) and np.array_equal(remaining(whole, world, [min(k * size, per)] * world),
                                                          unserved):
            return None, k
    return unserved, 0


def _resume_point_v1(s, state: dict) -> tuple[int, np.ndarray | None, int]:
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
    # the steps were taken under the round-robin dealing of that time: a prefix of the epoch is consumed
    epoch, k = (int_at_least(f"state_dict {name}", state.get(name), 0) for name in ("epoch", "iteration_step"))
    n = len(s.block_file)
    if k >= s._n_batches(None):
        return epoch + 1, None, 0
    return (epoch,) + _as_steps(s, intervals([[k * s.batch_size * s._world, n]], n))
