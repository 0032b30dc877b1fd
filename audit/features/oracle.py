"""``oracle``: the synthetic dataset's own factor encoder ``dataset.project(x)[0]`` (needs ``dataset=``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.features.base import Embedder, progress_bar


class OracleEmbedder(Embedder):
    """Factor estimates of the synthetic dataset that generated the data: ``dataset.project(x)[0]``."""

    name = "oracle"

    def __init__(self, dataset) -> None:
        super().__init__()
        self.dataset = dataset

    @property
    def id(self) -> str:
        return f"oracle:{self.dataset.spec}"

    def params(self) -> dict[str, Any]:
        return {"dataset": self.dataset.name, "dataset_params": self.dataset.params()}

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        x = self._check_input(x)
        if tuple(x.shape[1:]) != tuple(self.dataset.shape):
            raise DiffauditError(
                f"oracle features: samples have shape {tuple(x.shape[1:])} but dataset {self.dataset.spec!r} makes "
                f"{tuple(self.dataset.shape)}; pass the dataset that generated the data."
            )
        out = []
        with progress_bar(len(x), progress, "oracle") as adv:
            for i in range(0, len(x), batch_size):
                z = np.asarray(self.dataset.project(x[i : i + batch_size])[0], dtype=np.float64)
                out.append(z.reshape(len(z), -1))
                if adv:
                    adv(len(z))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
