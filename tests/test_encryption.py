"""Sensitive case fields at rest: ciphertext only, and a key ring that rotates."""
from cryptography.fernet import Fernet
from sqlalchemy import text

from tests.conftest import wait_until
from warmi import cli
from tests.support.api import edit

MARKER = "QZV-relato-4471"


def test_raw_rows_hold_no_plaintext_and_rotation_lets_the_old_key_go(stack, clean_databases, monkeypatch, tmp_path):
    stack.start_all()
    org = stack.organization()
    token = org["president"]["token"]
    case = stack.post_case(token, {"age_group": "26-40", "narrative": f"relato {MARKER}",
                                   "survivor_name": f"Nombre {MARKER}"}).json()
    assert edit(stack, "POST", f"/cases/{case['id']}/steps/R0/completion", token,
                     {"note": f"nota {MARKER}"}).status_code == 200

    def raw():
        with clean_databases["cases"].connect() as conn:
            rows = conn.execute(text("SELECT narrative_enc, survivor_name_enc FROM cases")).all()
            notes = conn.execute(text("SELECT note_enc FROM plan_steps WHERE note_enc IS NOT NULL")).scalars().all()
        return [v for row in rows for v in row] + list(notes)

    before = raw()
    assert len(before) == 3 and all(MARKER not in value for value in before)

    old_key, new_key = stack.key, Fernet.generate_key().decode()
    keys = tmp_path / "cases.keys"
    keys.write_text(f"{new_key}\n{old_key}\n")
    monkeypatch.delenv("CASES_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS_FILE", str(keys))
    assert cli.main(["keys", "rotate"]) == 0
    after = raw()
    assert after != before and all(MARKER not in value for value in after)
    assert cli.main(["keys", "retire"]) == 0
    assert keys.read_text().split() == [new_key]

    stack.stop("cases")
    stack.start("cases", ENCRYPTION_KEYS=new_key)  # the old key is gone
    detail = wait_until(lambda: stack.api("GET", f"/cases/{case['id']}", token).json())
    assert detail["narrative"] == f"relato {MARKER}"
    assert detail["survivor_name"] == f"Nombre {MARKER}"
    assert next(s for s in detail["plan"]["steps"] if s["step_id"] == "R0")["note"] == f"nota {MARKER}"


def test_retiring_keys_before_rotation_is_refused(stack, clean_databases, monkeypatch, tmp_path):
    stack.start_all()
    org = stack.organization()
    stack.post_case(org["president"]["token"], {"age_group": "26-40", "narrative": "x"})
    keys = tmp_path / "cases.keys"
    keys.write_text(f"{Fernet.generate_key().decode()}\n{stack.key}\n")
    monkeypatch.delenv("CASES_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS_FILE", str(keys))

    assert cli.main(["keys", "retire"]) == 1
    assert len(keys.read_text().split()) == 2
