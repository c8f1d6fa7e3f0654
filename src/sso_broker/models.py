"""Every model, imported once so ``Base.metadata`` is complete (Alembic, tests)."""

from sso_broker.companies.models import Company
from sso_broker.database import Base
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.models import SigningKey, SignInSession
from sso_broker.users.models import User

__all__ = ["Base", "Company", "SSOProvider", "SignInSession", "SigningKey", "User"]
