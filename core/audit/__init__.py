"""The audit log: who wrote what, when, in which request (docs/audit.md).

from core.audit import service as audit
audit.record(session, actor=user.username, action="product.update", entity="product",
             entity_id=product.id, details={"fields": ["price"]})
"""
