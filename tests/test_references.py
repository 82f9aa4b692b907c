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


def test_original_is_refused_while_withheld():
    from helpers.references import original

    assert original(double)(2) == 4  # for reading its source, outside a check
    with withheld(double), pytest.raises(ReferenceWithheld, match="test_references.double"):
        original(double)


def test_a_reloaded_module_s_references_are_withheld_too():
    """`importlib.reload` builds new wrappers of the same functions: they are withheld as well
    (found by an adversarial pass: a reloaded `evals.run_with_ablation` passed exercise 4.4)."""
    import importlib

    from helpers import evals
    from helpers.evals import ablations

    with withheld(evals.run_with_ablation):
        fresh = importlib.reload(ablations).run_with_ablation
        assert fresh is not evals.run_with_ablation
        with pytest.raises(ReferenceWithheld, match="evals.run_with_ablation"):
            fresh(None, None, [])
    importlib.reload(ablations)
