"""What a llama-server's ``/metrics`` says about how its slots were used."""

from __future__ import annotations

from rocm_nb import Client, LocalModel


def busy_slots(client: Client | LocalModel, before: dict[str, float]) -> float:
    """Average busy slots per decode since ``before`` (a metrics snapshot)."""
    after = client.metrics()
    decodes = after["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
    busy = (after["llamacpp:n_busy_slots_per_decode"] * after["llamacpp:n_decode_total"]
            - before["llamacpp:n_busy_slots_per_decode"] * before["llamacpp:n_decode_total"])
    return busy / decodes
