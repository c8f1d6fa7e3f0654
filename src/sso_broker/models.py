"""Every model, imported once so ``Base.metadata`` is complete (Alembic, tests)."""

from sso_broker.audit.models import AuditEvent
from sso_broker.companies.models import Company
from sso_broker.database import Base
from sso_broker.providers.models import ProviderCertificate, SSOProvider
from sso_broker.ratelimit import RateLimitCounter
from sso_broker.sessions.models import LoginCode, RefreshToken, SigningKey, SignInSession
from sso_broker.sso.models import ConsumedState, IdentityLink
from sso_broker.users.models import User

__all__ = [
    "AuditEvent",
    "Base",
    "Company",
    "ConsumedState",
    "IdentityLink",
    "LoginCode",
    "ProviderCertificate",
    "RateLimitCounter",
    "RefreshToken",
    "SSOProvider",
    "SignInSession",
    "SigningKey",
    "User",
]
