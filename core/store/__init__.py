"""The store API's face of the domain (CONTRACT.md, "Store API"): public ids, request shapes and the
use cases of `/api/inventory/...` and `/api/orders/...`, built on the products and orders modules."""
