"""The public surface of ``service`` is explicit and sorted."""

import service


def test_all_is_sorted_and_complete() -> None:
    assert service.__all__ == sorted(service.__all__)
    for name in service.__all__:
        assert hasattr(service, name), name
