"""Checks shared by every settings dataclass: each error names the setting and how to fix it."""


def require_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value}; set {owner}.{name}=<a number > 0>")


def require_one_of(owner: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {owner} {value!r}; choose one of: {', '.join(choices)} ({owner}=NAME)")
