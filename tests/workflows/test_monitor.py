"""workflows.monitor: a preset's evaluation that the data or process cannot have is dropped,
what the user asked for explicitly is kept (and refused by check_monitoring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iddpm.presets import get_preset
from iddpm.workflows.monitor import check_monitoring, drop_unsupported_defaults


def test_preset_defaults_the_data_cannot_have_are_dropped(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", arr_0=np.zeros((8, 8, 8, 1), np.uint8))
    base = get_preset("digits")
    assert (base.train.eval_every, base.train.fid_every) == (1000, 2000)
    short = base.replace(diffusion=base.diffusion.replace(num_timesteps=20))  # "25" steps > T
    assert drop_unsupported_defaults(short, set()).train.fid_every == 0
    assert drop_unsupported_defaults(short, set()).train.eval_every == 1000  # digits: test split
    npz = base.replace(train=base.train.replace(data=str(tmp_path / "d.npz")))
    assert drop_unsupported_defaults(npz, set()).train.eval_every == 0  # one split only
    given = npz.replace(train=npz.train.replace(eval_data="digits"))
    assert drop_unsupported_defaults(given, set()).train.eval_every == 1000
    assert drop_unsupported_defaults(base, set()) == base
    kept = drop_unsupported_defaults(npz, {"eval_every"})
    assert kept.train.eval_every == 1000
    with pytest.raises(ValueError, match="--eval-data"):
        check_monitoring(kept)
