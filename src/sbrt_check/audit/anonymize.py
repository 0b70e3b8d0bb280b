"""--anonymize: patient IDs and names out of every output, replaced by a salted hash."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from ..errors import InputError
from ..models import AuditRow

# Never rewritten by --anonymize: identifiers of the plan and its inputs, not of the patient.
STRUCTURAL = frozenset({"plan_uid", "input_hash", "protocol_name", "protocol_version", "contour_model", "verdict",
                        "status"})


class Anonymizer:
    """Patient IDs and names -> 'anon-' + 12 hex of HMAC-SHA256(salt, value): stable across runs
    and machines with the same salt, not reversible without it (a bare hash of a patient ID
    can be inverted by hashing every plausible ID, hence the salt).

    The patient ID and name columns are replaced whole; in every other text (messages, file
    paths, ROI notes) any whole-word occurrence of a known ID, name, or name component of 3 or
    more characters is replaced, case-insensitively.
    """

    def __init__(self, salt: str, identities: Iterable[tuple[str, str]]) -> None:
        if not salt:
            raise InputError(None, "--anonymize needs a salt: --salt TEXT or the SBRT_CHECK_SALT environment variable")
        self.salt = salt.encode()
        replacements: dict[str, str] = {}
        for patient_id, name in identities:
            for token in self._tokens(patient_id, name):
                replacements.setdefault(token.casefold(), self.token(token))
        ordered = sorted(replacements, key=len, reverse=True)
        self._replacements = replacements
        alternatives = "|".join(re.escape(t) for t in ordered)
        # Whole words only ('Doe' is not replaced inside 'does'); '_', '/', '^' and '.' separate words.
        self._pattern = (
            re.compile(f"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE) if ordered else None
        )

    @staticmethod
    def _tokens(patient_id: str, name: str) -> list[str]:
        tokens = [patient_id.strip(), name.strip()]
        parts = [p.strip() for p in re.split(r"[\^=]", name) if p.strip()]
        for joiner in (" ", "_", ", ", ",", "-", ""):
            tokens.append(joiner.join(parts))
            tokens.append(joiner.join(parts[1::-1]))  # given before family
        tokens += parts
        return [t for t in dict.fromkeys(tokens) if len(t) >= 3]

    def token(self, value: str) -> str:
        if not value:
            return ""
        return "anon-" + hmac.new(self.salt, value.strip().encode(), hashlib.sha256).hexdigest()[:12]

    def text(self, value: str) -> str:
        if not self._pattern or not value:
            return value
        return self._pattern.sub(lambda m: self._replacements[m.group(0).casefold()], value)

    def _walk(self, value: Any, key: str = "") -> Any:
        if key in STRUCTURAL:
            return value
        if key in ("patient_id", "patient_name") and isinstance(value, str):
            return value if value.startswith("anon-") else self.token(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, key) for v in value]
        return value

    def row(self, row: AuditRow) -> AuditRow:
        return AuditRow(self._walk(row.cells), self._walk(row.report) if row.report else None)

