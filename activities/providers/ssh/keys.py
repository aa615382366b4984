"""Bare-metal hosts' SSH keys as the API stores them: encrypted (Fernet), never in clear.

The API imports this module, so asyncssh and cryptography are imported when a key is stored, not
when the API starts: without them the bare-metal provider is off and only this call refuses.
"""

from __future__ import annotations

from activities.providers.base import InvalidRequestError, ProviderUnavailableError
from activities.providers.ssh.settings import SSHSettings


def encrypt_private_key(private_key: str, settings: SSHSettings) -> str:
    """A `private_key_ref` for a key given through the API: Fernet-encrypted, never clear."""
    if settings.key_encryption_key is None:
        raise InvalidRequestError(
            "set INVENTIV_SSH_KEY_ENCRYPTION_KEY to register keys; or give a key path instead"
        )
    try:
        import asyncssh
        from cryptography.fernet import Fernet
    except ImportError as exc:
        raise ProviderUnavailableError(
            f"the bare-metal provider is off: {exc.name} is not installed"
        ) from None
    try:
        asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError):
        raise InvalidRequestError("the private key is not a valid unencrypted SSH key") from None
    fernet = Fernet(settings.key_encryption_key.get_secret_value().encode())
    return "fernet:" + fernet.encrypt(private_key.encode()).decode()
