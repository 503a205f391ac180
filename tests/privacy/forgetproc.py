"""forget() in a process of its own, against the database a test shares with it.

    python -m tests.privacy.forgetproc NAMESPACE ALIAS SUBJECT

declares the member projection of tests/privacy/test_forget_read_models on NAMESPACE
and the database ALIAS ("pg": the test's PostgreSQL, whose settings come in
AETHER_TEST_PG_DATABASE), forgets SUBJECT, and prints the audit event's data as JSON.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    namespace, alias, subject = sys.argv[1:4]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from aether_django import privacy
    from tests.privacy.test_forget_read_models import declare

    declare(namespace, alias, [])
    print(json.dumps(privacy.forget(subject).data), flush=True)


if __name__ == "__main__":
    main()
