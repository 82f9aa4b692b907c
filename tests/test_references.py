"""Reference implementations can be withheld from the exercises that rebuild them."""

import pytest

from helpers.references import ReferenceWithheld, reference, withheld


@reference
def double(x):
    """Twice x."""
    return 2 * x


def test_a_withheld_reference_refuses_and_comes_back():
    assert double(2) == 4
    with withheld(double):
        with pytest.raises(
            ReferenceWithheld,
            match="your answer calls the course's `test_references.double`, which this exercise withholds",
        ):
            double(2)
    assert double(3) == 6


def test_a_reference_keeps_its_name_and_docstring_but_hides_the_unguarded_function():
    assert double.__name__ == "double" and double.__doc__ == "Twice x."
    assert not hasattr(double, "__wrapped__")


def test_only_marked_functions_can_be_withheld():
    with pytest.raises(TypeError, match="not marked @reference"):
        with withheld(len):
            pass
