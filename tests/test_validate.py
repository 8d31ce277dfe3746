"""The shared argument checks in memstore._validate."""

import numpy as np
import pytest

from memstore._validate import choice, flag, int_at_least, is_int, positive_int
from memstore.errors import ParameterError


def test_is_int():
    assert is_int(3) and is_int(np.int32(3)) and is_int(np.uint64(3))
    assert not is_int(True) and not is_int(np.True_) and not is_int(3.0) and not is_int("3")


def test_positive_int():
    assert positive_int("hop", np.int64(5)) == 5 and type(positive_int("hop", np.int64(5))) is int
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ParameterError, match=r"hop=.* must be a positive integer"):
            positive_int("hop", bad)


def test_int_at_least():
    assert int_at_least("seed", 0, 0) == 0
    for bad in (-1, False, 1.5):
        with pytest.raises(ParameterError, match=r"seed=.* must be an integer >= 0"):
            int_at_least("seed", bad, 0)


def test_choice_matches_flags_by_identity():
    allowed = (False, "standard", "pca")
    assert choice("normalize", False, allowed) is False
    assert choice("normalize", "pca", allowed) == "pca"
    for bad in (0, True, "PCA", None, ["pca"]):
        with pytest.raises(ParameterError, match=r"normalize=.* must be one of"):
            choice("normalize", bad, allowed)
    assert choice("balance", None, (None, "class")) is None


def test_flag():
    assert flag("tail", np.True_) is True
    for bad in (1, "yes", None):
        with pytest.raises(ParameterError, match=r"tail=.* must be True or False"):
            flag("tail", bad)
