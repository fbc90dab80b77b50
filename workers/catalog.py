"""The deterministic seed data of the shop services: customers and products.

Written to Redis on a service's first use (or by its `seed` method), identical on every
machine and every run, so tests and the demo can name `cust-0001` or `SKU-LAMP-LTD`.
"""

from __future__ import annotations

from typing import Any

SEED_VERSION = "1"

_FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Radia",
    "Linus",
]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson"]
_TIERS = ["standard", "standard", "silver", "gold"]

CUSTOMER_COUNT = 100


def customer_id(n: int) -> str:
    return f"cust-{n:04d}"


def customers() -> list[dict[str, Any]]:
    out = []
    for n in range(1, CUSTOMER_COUNT + 1):
        first, last = _FIRST[n % len(_FIRST)], _LAST[(n * 7) % len(_LAST)]
        out.append(
            {
                "customer_id": customer_id(n),
                "name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower()}{n}@example.com",
                "tier": _TIERS[n % len(_TIERS)],
                # Every 25th customer is blocked: the order workflow refuses them.
                "status": "blocked" if n % 25 == 0 else "active",
            }
        )
    return out


#: sku -> (name, unit price, initial stock). SKU-LAMP-LTD is a limited edition that the
#: demo's orders sell out.
PRODUCTS: dict[str, tuple[str, float, int]] = {
    "SKU-KB-01": ("Mechanical keyboard", 89.0, 5000),
    "SKU-MS-02": ("Wireless mouse", 25.5, 5000),
    "SKU-MN-27": ("27in monitor", 279.0, 2000),
    "SKU-HD-03": ("Headphones", 119.0, 3000),
    "SKU-CB-10": ("USB-C cable", 9.99, 10000),
    "SKU-DK-05": ("Docking station", 149.0, 1500),
    "SKU-CH-07": ("Desk chair", 329.0, 800),
    "SKU-WC-08": ("Webcam", 59.0, 2500),
    "SKU-LAMP-LTD": ("Limited edition desk lamp", 499.0, 8),
}

REGULAR_SKUS = [sku for sku in PRODUCTS if sku != "SKU-LAMP-LTD"]
LIMITED_SKU = "SKU-LAMP-LTD"
