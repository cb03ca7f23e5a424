"""Ray-ready stages: each module holds one class whose ``__init__`` loads what it needs once per
actor and whose ``__call__(batch) -> batch`` does one step."""
