"""docs/configuration-reference.md is the schema's own account of every key: regenerate it with
`python -m forgeline.config.reference > docs/configuration-reference.md` after changing the schema."""

from pathlib import Path

from forgeline.config.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration-reference.md"


def test_the_configuration_reference_is_the_schemas():
    assert PAGE.read_text() == render(), ("docs/configuration-reference.md differs from the schema: run "
                                          "`python -m forgeline.config.reference > docs/configuration-reference.md`")


def test_it_names_every_key_with_its_default_and_bounds():
    text = render()
    assert "| `train.epochs` | int | `3` | ≥ 1, ≤ 10000 |" in text
    assert "| `task.stride` | int | `32` | ≥ 0, ≤ 4096, only for token_classification |" in text
    assert "| `serve.max_receiving_bodies` | int | `512` |" in text and "| `score.model` |" in text
