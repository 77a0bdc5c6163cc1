# The compiled batch summary (_summary.c); aggregation.py is its Python face.
from collections.abc import Set as AbstractSet

def configure(
    measures: tuple[str, ...],
    money: frozenset[str],
    statuses: tuple[str, ...],
    types: tuple[str, ...],
    currencies: frozenset[str],
    max_event_bytes: int,
    max_id_chars: int,
    max_label_chars: int,
    money_digits: int,
    money_places: int,
) -> None: ...

class Summary:
    def __init__(self, since_us: int | None = None) -> None: ...
    @property
    def since_us(self) -> int | None: ...
    def __len__(self) -> int: ...
    def feed(
        self, values: list[bytes | None], start: int, stop: int, lo_us: int, hi_us: int
    ) -> tuple[int, int | None]: ...
    def add(
        self,
        txn_id: str,
        event_id: str,
        merchant_id: str | None,
        country: str,
        currency: str,
        channel: str,
        at_us: int,
        status: int,
        type: int,
        amount_units: int,
        fee_units: int,
    ) -> bool | int: ...  # True counted, False a repeat, 2 a repeat with other content
    def without(self, txn_ids: AbstractSet[str] | Summary) -> Summary: ...
    def ledger_json(self) -> str: ...
    def hourly_json(self) -> str: ...
    def minute_json(self) -> str: ...
    def hours(self) -> list[int]: ...
    def merchants(self, lo_us: int = ..., hi_us: int = ...) -> set[str | None]: ...
    def txn_ids(self) -> list[str]: ...
    def conflicts(self, other: Summary) -> list[str]: ...
