"""Check digits the synthetic documents carry, so their numbers are as valid as real ones: Luhn
(card numbers, member ids), ISO 7064 MOD 11-2 (document numbers) and the UPU S10 check digit of
postal tracking numbers."""

from __future__ import annotations


def luhn_check_digit(digits: str) -> str:
    """Luhn (mod 10) check digit for a digit string (cards, IMEI, many member numbers).

    From the rightmost payload digit, double every second digit (subtracting 9 above 9), sum all,
    and return the digit that brings the sum to a multiple of 10. "7992739871" -> "3".
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # these are the doubled ones once the check digit is appended on the right
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True when the last digit of `number` is the Luhn check digit of the others."""
    return number.isdigit() and len(number) > 1 and luhn_check_digit(number[:-1]) == number[-1]


def iso7064_mod11_2_check(digits: str) -> str:
    """ISO 7064 MOD 11-2 check character ("0".."9" or "X"), as used by ORCID and national IDs.

    Iterate p = (p + d) * 2 mod 11 over the digits, then the check is (12 - p) mod 11, with 10 as X.
    "000000021825009" -> "7" (ORCID 0000-0002-1825-0097).
    """
    p = 0
    for ch in digits:
        p = (p + int(ch)) * 2 % 11
    c = (12 - p) % 11
    return "X" if c == 10 else str(c)


def iso7064_mod11_2_valid(number: str) -> bool:
    """True when the last character of `number` is the MOD 11-2 check of the digits before it."""
    body, check = number[:-1], number[-1:]
    return body.isdigit() and iso7064_mod11_2_check(body) == check


_S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)


def s10_check_digit(serial: str) -> str:
    """UPU S10 check digit for an 8-digit postal item serial (tracking numbers like RA123456785GB).

    Weighted sum with 8,6,4,2,3,5,9,7; check = 11 - sum mod 11, where 10 -> 0 and 11 -> 5.
    "47312482" -> "9" (AA473124829GB).
    """
    if len(serial) != 8 or not serial.isdigit():
        raise ValueError(f"S10 serial must be 8 digits, got {serial!r}")
    c = 11 - sum(w * int(d) for w, d in zip(_S10_WEIGHTS, serial)) % 11
    return {10: "0", 11: "5"}.get(c, str(c))


def s10_valid(tracking: str) -> bool:
    """True for a 13-character S10 number (2 letters, 8 digits, check digit, 2 letters) that checks.
    """
    return (len(tracking) == 13 and tracking[:2].isalpha() and tracking[-2:].isalpha()
            and tracking[2:11].isdigit() and s10_check_digit(tracking[2:10]) == tracking[10])
