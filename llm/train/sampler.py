"""The order the training sequences are drawn in: a seeded permutation per epoch, resumable from one integer."""

from __future__ import annotations

import numpy as np

from common.errors import InvalidArgumentError


class BatchSampler:
    """Global batches of sequence indices: a fresh permutation per epoch (seeded by (seed, epoch)), consumed in
    order. The whole state is one integer, `position` (sequences consumed), so a checkpoint stores it and a
    resumed run draws exactly the batches an uninterrupted run would; DDP ranks draw the same global batch and
    each takes its slice."""

    def __init__(self, num_sequences: int, batch_size: int, seed: int, position: int = 0):
        if num_sequences < 1:
            raise InvalidArgumentError("no sequences to sample from")
        self.n, self.batch_size, self.seed, self.position = num_sequences, batch_size, seed, position
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    @property
    def epoch(self) -> float:
        return self.position / self.n

    def next_indices(self) -> np.ndarray:
        """The next global batch: (batch_size,) int64 indices (wrapping into the next epoch when needed)."""
        out = []
        need = self.batch_size
        while need:
            epoch, offset = divmod(self.position, self.n)
            take = min(need, self.n - offset)
            out.append(self._permutation(epoch)[offset : offset + take])
            self.position += take
            need -= take
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "num_sequences": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["num_sequences"] != self.n:
            raise InvalidArgumentError(
                f"data position is for {state['num_sequences']} sequences, the shards have {self.n}"
            )
        self.position, self.seed = int(state["position"]), int(state["seed"])
