"""The one judge (helpers.checks._judge): one tolerance, one way to read an answer, to call the
learner and to name a mistake."""

import numpy as np
import pytest
import torch

from helpers import checks
from helpers.checks._judge import (
    SMALLEST_SCALE,
    TOLERANCE,
    Case,
    Deferred,
    Requirement,
    call_learner,
    judge,
    name_mistake,
    read_answer,
    same,
)


def test_the_tolerance_is_relative_to_the_references_scale():
    big = torch.tensor([1000.0, -2000.0])
    assert same(big + 0.1, big)  # 0.1 of 2000: within 1e-4 of the scale
    assert not same(big + 1.0, big)
    small = torch.tensor([1e-3, -2e-3])
    assert same(small + 1e-8, small) and not same(small + 1e-6, small)  # no floor of 1
    assert same(1e-12, 0.0) and not same(10 * TOLERANCE * SMALLEST_SCALE, 0.0)
    assert same(torch.tensor([float("nan"), float("-inf")]), torch.tensor([float("nan"), -np.inf]))
    assert not same(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0]]))  # shapes differ
    assert same((1.0, {"a": [2.0, 3.0]}), (1.0 + 1e-6, {"a": [2.0, 3.0]}))
    assert not same({1, 2}, {1, 3}) and same({1, 2}, {2, 1})


def _cases() -> list[Case]:
    return [
        Case((0,), 1.0, [("doubled", 2.0), ("plus one", 2.0 + 1e-3)], "case 0"),
        Case((1,), 3.0, [("doubled", 6.0), ("plus one", 4.0)], "case 1"),
        Case((2,), 0.0, [("doubled", 0.0), ("plus one", 1.0)], "case 2"),
    ]  # "doubled" says nothing in case 2, where it gives the right answer


def _judge(answers: dict, cases=None):
    judge("Ex", "f", lambda case: answers[case.args[0]], cases or _cases())


def test_a_mistake_is_named_only_when_it_explains_every_case_where_it_tells():
    with pytest.raises(checks.CheckFailed, match="case 0: your answer matches a common mistake: "
                       "doubled"):  # fmt: skip
        _judge({0: 2.0, 1: 6.0, 2: 0.0})
    with pytest.raises(checks.CheckFailed) as info:  # matches "doubled" in case 0 only
        _judge({0: 2.0, 1: 5.0, 2: 0.0})
    assert "common mistake" not in str(info.value) and "case 0: got 2.0000" in str(info.value)


def test_a_mistake_a_right_case_contradicts_is_not_named():
    cases = [
        Case((0,), 1.0, [("squared", 4.0)], "case 0"),
        Case((1,), 2.0, [("squared", 5.0)], "b"),
    ]
    with pytest.raises(checks.CheckFailed) as info:  # right in case 0, where "squared" tells
        _judge({0: 1.0, 1: 5.0}, cases)
    assert "common mistake" not in str(info.value)
    with pytest.raises(checks.CheckFailed, match="matches a common mistake: squared"):
        _judge({0: 4.0, 1: 5.0}, cases)


def test_two_mistakes_that_explain_the_same_answers_are_both_left_unnamed():
    cases = [Case((0,), 0.0, [("a", 1.0), ("b", 1.0)], "case 0")]
    with pytest.raises(checks.CheckFailed) as info:
        _judge({0: 1.0}, cases)
    assert "common mistake" not in str(info.value)
    name_mistake("Ex", [])  # nothing wrong, nothing named


def test_requirements_judge_answers_where_many_are_right():
    case = Case((0,), [Requirement(lambda a: a > 0, "must be positive"),
                       Requirement(lambda a: a < 10, "must be below 10")], where="here")  # fmt: skip
    judge("Ex", "f", lambda c: 5.0, [case])
    with pytest.raises(checks.CheckFailed, match="here: must be below 10"):
        judge("Ex", "f", lambda c: 50.0, [case])


def test_a_deferred_answer_is_worked_out_only_once_the_answers_are_read():
    worked_out = []
    case = Case((), Deferred(lambda: worked_out.append(1) or {"a": 1}))

    def read(answer, case):
        if not isinstance(answer, dict):
            raise checks.CheckFailed("Ex", "a dict, please")
        return answer

    with pytest.raises(checks.CheckFailed, match="a dict, please"):
        judge("Ex", "f", lambda c: "x", [case], read=read)
    assert not worked_out
    judge("Ex", "f", lambda c: {"a": 1}, [case], read=read)
    assert worked_out == [1]


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.tensor([0.25]), r"got a Tensor of shape \(1,\)"),
        (np.array([0.25, 1.0]), r"got a ndarray of shape \(2,\)"),
        (True, "got bool"),
        ("0.25", "got str"),
        (None, r"got NoneType \(did you forget the return\?\)"),
        (float("nan"), "returned NaN"),
        (torch.tensor(1 + 2j), "complex"),
    ],
)
def test_what_is_not_one_number_is_named(value, message):
    with pytest.raises(checks.CheckFailed, match=message):
        read_answer("Ex", "f", value, Case((), 0.5))


@pytest.mark.parametrize("value", [0.25, np.float32(0.25), torch.tensor(0.25), np.array(0.25)])
def test_a_number_may_be_any_real_scalar(value):
    assert read_answer("Ex", "f", value, Case((), 0.5)) == 0.25


def test_a_wrong_shape_is_named_with_the_cases_hint():
    case = Case((), torch.zeros(3, 4), shape_hints={(4, 3): "transposed: rows are queries."})
    with pytest.raises(checks.CheckFailed, match=r"returned shape \(4, 3\): transposed"):
        read_answer("Ex", "f", torch.zeros(4, 3), case)
    with pytest.raises(checks.CheckFailed, match=r"returned shape \(2, 2\); expected \(3, 4\)"):
        read_answer("Ex", "f", torch.zeros(2, 2), case)


def test_the_learner_sees_their_own_lines_and_the_sizes_question_only_when_it_fits():
    def shape_bug(x):
        y = x.T  # the learner's line
        return y @ x.T

    with pytest.raises(checks.CheckFailed) as info:
        call_learner("Ex", shape_bug, (torch.zeros(3, 5),), name="f()", where="a 3 x 5 input")
    message = str(info.value)
    assert "f() raised RuntimeError on a 3 x 5 input" in message
    assert "in shape_bug: return y @ x.T" in message and "_judge.py" not in message
    assert "assume sizes" not in message  # every number in the error is the input's

    def built_in_size(x):
        return x.reshape(4, 32)  # the notebook's d_model

    with pytest.raises(checks.CheckFailed, match="does your code assume sizes"):
        call_learner("Ex", built_in_size, (torch.zeros(3, 5),), name="f()")


def test_the_learner_gets_clones_and_an_error_for_what_is_not_a_function():
    x = torch.ones(3)
    call_learner("Ex", lambda t: t.zero_(), (x,))
    assert x.sum() == 3
    with pytest.raises(checks.CheckFailed, match=r"pass your function itself .*got a dict"):
        call_learner("Ex", {"a": 1}, ())
    with pytest.raises(checks.ExerciseNotDone):
        call_learner("Ex", lambda: (_ for _ in ()).throw(NotImplementedError("Exercise 9.9")), ())


def test_an_errors_hint_is_found_by_its_type_or_a_type_it_derives_from():
    def singular(x):
        return torch.linalg.inv(x)

    hints = {"RuntimeError": lambda err: f"a hint written from the error ({type(err).__name__})"}
    with pytest.raises(checks.CheckFailed, match=r"a hint written from the error \(_LinAlgError\)"):
        call_learner("Ex", singular, (torch.zeros(2, 2),), on_error=hints)
    hints = {"_LinAlgError": "not an inverse", "RuntimeError": "the general hint"}
    with pytest.raises(checks.CheckFailed, match="not an inverse") as info:
        call_learner("Ex", singular, (torch.zeros(2, 2),), on_error=hints)
    assert "the general hint" not in str(info.value)


def test_a_requirement_and_the_pass_line_may_quote_what_was_measured(capsys):
    case = Case((0,), [Requirement(lambda a: a > 1, lambda a: f"measured {a:.2f}, needs > 1")])
    with pytest.raises(checks.CheckFailed, match="measured 0.50, needs > 1"):
        judge("Ex", "f", lambda c: 0.5, [case])
    assert judge("Ex", "f", lambda c: 2.0, [case]) == [2.0]


def test_an_unmet_requirement_does_not_hide_a_mistake_named_across_the_cases():
    cases = [
        Case((0,), [Requirement(lambda a: a > 1, "needs > 1")], [("halved", 0.5)], "case 0"),
        Case((1,), 4.0, [("halved", 2.0)], "case 1"),
    ]
    with pytest.raises(
        checks.CheckFailed, match="case 0: your answer matches a common mistake: halved"
    ):
        judge("Ex", "f", lambda c: {0: 0.5, 1: 2.0}[c.args[0]], cases)
    with pytest.raises(checks.CheckFailed, match="case 0: needs > 1"):  # not the mistake's answer
        judge("Ex", "f", lambda c: {0: 0.7, 1: 4.0}[c.args[0]], cases)
