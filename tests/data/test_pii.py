"""PII scrubbing replaces personal data and secrets with placeholders and leaves documentation's numbers alone."""

from __future__ import annotations

import time

import pytest

from dapt.data.pii import PII_KINDS, PiiScrubber, iban_is_valid, luhn_is_valid, scrub_pii

# (kind, value): each must be replaced at the very start, in the middle and at the very end of a text.
FOUND = [
    ("email", "jane.doe@acme-corp.co.uk"),
    ("email", "bob+news@mail.com"),
    ("email", "first_last@mail.com"),
    ("email", "jürgen.müller@beispiel.de"),
    ("phone", "+1 415 555 2671"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "+49 30 1234567"),
    ("phone", "+14155552671"),
    ("phone", "+7 (495) 123-45-67"),
    ("phone", "0049 30 1234567"),
    ("phone", "(415) 555-2671"),
    ("phone", "415-555-2671"),
    ("phone", "415.555.2671"),
    ("phone", "020 7946 0958"),
    ("phone", "01 23 45 67 89"),
    ("ip", "81.2.69.160"),
    ("ip", "172.16.254.1"),
    ("ip", "2a00:1450:4001:82a::200e"),
    ("ip", "fe80::1ff:fe23:4567:890a"),
    ("card", "4111 1111 1111 1111"),
    ("card", "5500-0000-0000-0004"),
    ("card", "3782 822463 10005"),
    ("card", "4012888888881881"),
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "DE89370400440532013000"),
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("secret", "xoxb-123456789012-abcdefABCDEF"),
    ("secret", "sk-proj-abc123def456ghi789jkl012"),
]

# Text that must come through unchanged: numbers of documentation and code, and look-alikes that fail
# their validator.
KEPT = [
    ">>> a = np.array([1, 2, 3])\n>>> np.mean(a)\n2.0",
    "array([ 0.12345678,  1.23456789, -0.98765432])",
    "3.141592653589793 and 1.23456789e-05 and 1e+10 20 30",
    "released 2024-01-31, version 1.2.3, see section 7.4.7.1 and 2.7.2.2",
    "int32 covers -2147483648 to +2147483647",
    ">>> rng = np.random.default_rng(348932549825235)",
    "https://web.archive.org/web/20010524124604/http://example.org",
    "Natick, MA 01760-2098, USA",
    "a[1::2], x[::-1], std::vector, 12:30:45",
    "999.1.1.1 is not an address; 192.0.2.1 and 2001:db8::1 are for documentation; 127.0.0.1 is loopback",
    "4111 1111 1111 1112 fails Luhn",  # one digit off a valid card number
    "GB82 WEST 1234 5698 7654 33 fails mod 97",  # one digit off a valid IBAN
    "C = A@B.conj() and @property and x@y.T and x@y.shape; write to user@example.com or root@localhost",
    "[0 1 1 0 1 0 0 1 1 0 1 0 1 1 0 1]",
    'password = "your-password1" and token: "abc"',
]


@pytest.mark.parametrize(("kind", "value"), FOUND)
def test_each_kind_is_replaced_at_the_start_middle_and_end(kind: str, value: str) -> None:
    placeholder = f"<{kind.upper()}>" if kind != "secret" else "<SECRET>"
    for text, expected in [
        (value, placeholder),
        (f"{value} is at the start.", f"{placeholder} is at the start."),
        (f"Write to {value} today.", f"Write to {placeholder} today."),
        (f"It ends with ({value})", f"It ends with ({placeholder})"),
        (f"The last line:\n{value}", f"The last line:\n{placeholder}"),
    ]:
        scrubbed, counts = scrub_pii(text)
        assert scrubbed == expected, text
        assert counts == {kind: 1}


@pytest.mark.parametrize("text", KEPT)
def test_numbers_of_documentation_and_invalid_look_alikes_are_kept(text: str) -> None:
    assert scrub_pii(text) == (text, {})


def test_validators() -> None:
    assert luhn_is_valid("4111111111111111") and not luhn_is_valid("4111111111111112")
    assert iban_is_valid("GB82 WEST 1234 5698 7654 32") and not iban_is_valid("GB82 WEST 1234 5698 7654 33")
    assert not iban_is_valid("GB82")


def test_secret_assignment_keeps_the_name_and_the_pem_block_goes_whole() -> None:
    text = (
        'client = Client(api_key="a1b2c3d4e5f6g7h8i9")\n'
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq3\nabc0==\n-----END RSA PRIVATE KEY-----\n"
        "the end"
    )
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == 'client = Client(api_key="<SECRET>")\n<SECRET>\nthe end'
    assert counts == {"secret": 2}


def test_counts_per_kind_and_selected_kinds() -> None:
    text = "Mail a@mail.com or b@mail.com, call +1 415 555 2671, pay 4111 1111 1111 1111 from 81.2.69.160."
    scrubber = PiiScrubber()
    assert scrubber(text) == "Mail <EMAIL> or <EMAIL>, call <PHONE>, pay <CARD> from <IP>."
    assert scrubber("no personal data here") == "no personal data here"
    assert dict(scrubber.replaced) == {"secret": 0, "email": 2, "iban": 0, "card": 1, "ip": 1, "phone": 1}
    assert (scrubber.seen, scrubber.changed, scrubber.dropped) == (2, 1, 0)

    only_email = PiiScrubber(kinds=["email"])
    assert only_email(text) == text.replace("a@mail.com", "<EMAIL>").replace("b@mail.com", "<EMAIL>")
    assert dict(only_email.replaced) == {"email": 2}
    with pytest.raises(ValueError, match="unknown PII kind.*ssn"):
        PiiScrubber(kinds=["email", "ssn"])
    assert set(PII_KINDS) == {"secret", "email", "iban", "card", "ip", "phone"}


def test_a_megabyte_of_number_heavy_text_in_well_under_a_second_per_megabyte() -> None:
    # Long digit runs, dotted numbers and colon runs are where a regex can backtrack badly.
    chunk = (
        "Examples\n>>> x = np.linspace(0, 1, 11)\narray([0. , 0.1, 0.2, 0.3])\n"
        + " ".join(str(i * 7919) for i in range(40))
        + "\n1.2.3.4.5.6.7.8.9 " * 3
        + "1:2:3:4:5:6:7:8:9:a:b:c "
        + "+1 2 3 4 5 6 7 8 9 0 1 2 3 "
        + "0" * 60
        + " x@"
        + "ab-" * 30
        + " GB82"
        + " ABCD" * 12
        + "\nSee user@mail.com and call +44 20 7946 0958.\n"
    )
    text = chunk * (1_000_000 // len(chunk))
    started = time.perf_counter()
    scrubbed, counts = scrub_pii(text)
    assert time.perf_counter() - started < 2.5  # ~0.2 s measured; a backtracking blow-up takes minutes
    assert counts == {"email": text.count("user@mail.com"), "phone": text.count("+44 20")}
