"""Content of the synthetic documents: text lines plus the named fields to extract from them.

One call, `generate_document(kind, rng)`, returns a `Document`: 3 to 8 lines of printable ASCII, each at most
`render.MAX_LINE_CHARS` characters (the embedded model reads one 40-token row per line), and 3 to 5
fields whose string values appear verbatim in those lines, so extraction is reading plus picking.

Everything is drawn from the given `numpy.random.Generator` and the small word lists below, so the
same generator state always gives the same document. Changing what this module draws (a list, an
order, a format) changes every dataset built from it: bump `data.GENERATOR_VERSION` when you do.

Identifiers carry real check digits (Luhn, ISO 7064 MOD 11-2, UPU S10 mod 11) so a model that reads
them can be checked for consistency, and so they look like the real thing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import string

import numpy as np

from harness.data.pages import MAX_LINE_CHARS, PRESETS, TOKEN_PX
from harness.data.check_digits import iso7064_mod11_2_check, luhn_check_digit, s10_check_digit

KINDS = ("receipt", "invoice", "id_card", "shipping_label", "form")
# Characters a line may hold: the model's vocabulary is printable ASCII without the odd whitespace.
ALLOWED_CHARS = frozenset(string.printable) - frozenset("\t\r\n\x0b\x0c")
# CTC reads a row as PRESETS["easy"].width_px / TOKEN_PX = 40 frames; a repeated character (e.g. two
# spaces, "00") needs a blank frame between its copies, so a line costs len + adjacent repeats.
CTC_FRAMES_PER_ROW = PRESETS["easy"].width_px // TOKEN_PX
MIN_LINES, MAX_LINES = 3, 8
MIN_FIELDS, MAX_FIELDS = 3, 5

# ---- word lists (small and embedded on purpose: no downloads, stable across machines) ----------
FIRST_NAMES = ("Maria", "James", "Anna", "Li", "Omar", "Sofia", "Lukas", "Emma", "Noah", "Yuki",
               "Priya", "Carlos", "Elena", "Ahmed", "Chloe", "Ivan", "Grace", "Mateo", "Aisha",
               "Tom", "Hana", "Pierre", "Olga", "Kofi")
LAST_NAMES = ("Lopez", "Smith", "Muller", "Chen", "Haddad", "Rossi", "Novak", "Tanaka", "Patel",
              "Garcia", "Dubois", "Kowalski", "Okafor", "Silva", "Nguyen", "Jensen", "Brown",
              "Ivanova", "Kim", "Schmidt", "Moreau", "Costa", "Ali", "Berg")
COMPANY_STEMS = ("Acme", "Globex", "Initech", "Umbra", "Northwind", "Blue Oak", "Redline",
                 "Vertex", "Sunrise", "Harbor", "Pioneer", "Atlas", "Nimbus", "Cobalt", "Maple",
                 "Orion")
COMPANY_TRADES = ("Logistics", "Foods", "Systems", "Trading", "Labs", "Supply", "Media", "Tools")
COMPANY_FORMS = ("Ltd", "GmbH", "Inc", "Co", "LLC", "SA", "BV", "plc")
STORES = ("Corner Bakery", "Fresh Mart", "Cafe Lumen", "Book Nook", "Green Grocer", "Quick Stop",
          "Pixel Store", "Hardware Hub", "Tea House", "City Pharmacy", "Noodle Bar", "Flower Co")
# (item, typical unit price in cents of USD/EUR/GBP; JPY prices are x100 without decimals)
ITEMS = (("Coffee", 350), ("Bagel", 250), ("Milk 1L", 120), ("Bread", 280), ("Apples", 310),
         ("Tea", 290), ("Notebook", 450), ("Pen", 150), ("Batteries", 699), ("Soap", 225),
         ("Rice 2kg", 540), ("Eggs x12", 389), ("Juice", 275), ("Cheese", 620), ("Tape", 199),
         ("Bulb", 475), ("Noodles", 850), ("Roses", 1200))
SERVICES = ("Consulting", "Design work", "Freight", "Support plan", "Hosting", "Training",
            "Repairs", "Licences", "Audit", "Translation")
STREETS = ("Oak St", "Elm Rd", "Main St", "High St", "Park Ave", "Mill Ln", "Kings Rd", "Lake Dr",
           "Church St", "Station Rd", "Bridge St", "Hill Rd")
# (city, ISO 3166 alpha-2, ISO alpha-3 nationality code, currency of the country)
CITIES = (("Springfield", "US", "USA", "USD"), ("Austin", "US", "USA", "USD"),
          ("Leeds", "GB", "GBR", "GBP"), ("Bristol", "GB", "GBR", "GBP"),
          ("Lyon", "FR", "FRA", "EUR"), ("Bremen", "DE", "DEU", "EUR"),
          ("Porto", "PT", "PRT", "EUR"), ("Delft", "NL", "NLD", "EUR"),
          ("Turin", "IT", "ITA", "EUR"), ("Cork", "IE", "IRL", "EUR"),
          ("Osaka", "JP", "JPN", "JPY"), ("Sendai", "JP", "JPN", "JPY"))
MAIL_DOMAINS = ("mail.com", "post.net", "inbox.org", "web.de")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# One format per convention seen on real documents: ISO, day-first, US long form, short German.
DATE_FORMATS = ("iso", "dmy_slash", "mon_d_y", "dmy_dot_short")


@dataclasses.dataclass(frozen=True)
class Document:
    """One synthetic document: its kind, its lines (top to bottom) and the fields to extract."""

    kind: str
    lines: tuple[str, ...]
    fields: dict[str, str]  # name -> value, in reading order; every value is a substring of text

    @property
    def text(self) -> str:
        """The transcription target: the lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def fields_json(self) -> str:
        """The extraction target: compact JSON, fields in reading order."""
        return json.dumps(self.fields, separators=(",", ":"))


# ---- small random helpers ------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=n))


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _fit(value: str, room: int) -> str:
    """Shorten `value` to at most `room` characters, cutting at a word boundary when possible."""
    if len(value) <= room:
        return value
    cut = value[:room].rstrip()
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return head.rstrip(" ,.-")


def person_name(rng: np.random.Generator) -> tuple[str, str]:
    """(given name, surname)."""
    return _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)


def company_name(rng: np.random.Generator) -> str:
    """'Northwind Logistics GmbH', 'Acme Ltd', ..."""
    parts = [_pick(rng, COMPANY_STEMS)]
    if _chance(rng, 0.5):
        parts.append(_pick(rng, COMPANY_TRADES))
    parts.append(_pick(rng, COMPANY_FORMS))
    return " ".join(parts)


def random_date(rng: np.random.Generator, first_year: int, last_year: int) -> dt.date:
    start = dt.date(first_year, 1, 1).toordinal()
    end = dt.date(last_year, 12, 31).toordinal()
    return dt.date.fromordinal(int(rng.integers(start, end + 1)))


def format_date(date: dt.date, fmt: str) -> str:
    """2024-03-15 | 15/03/2024 | Mar 15 2024 | 15.03.24, by `fmt` in DATE_FORMATS."""
    if fmt == "iso":
        return date.isoformat()
    if fmt == "dmy_slash":
        return f"{date.day:02d}/{date.month:02d}/{date.year}"
    if fmt == "mon_d_y":
        return f"{MONTHS[date.month - 1]} {date.day} {date.year}"
    if fmt == "dmy_dot_short":
        return f"{date.day:02d}.{date.month:02d}.{date.year % 100:02d}"
    raise ValueError(f"unknown date format {fmt!r}")


def format_number(minor_units: int, currency: str) -> str:
    """An amount without currency: 1,234.50 (cents) or 1,234 for JPY (no minor unit)."""
    if currency == "JPY":
        return f"{minor_units:,d}"
    return f"{minor_units // 100:,d}.{minor_units % 100:02d}"


def format_amount(minor_units: int, currency: str, rng: np.random.Generator) -> str:
    """An amount with its currency as documents print it: $9.50, USD 9.50, 9.50 EUR, JPY 1,200.

    Only USD gets a symbol: the others' symbols are not ASCII, so they appear as ISO codes.
    """
    number = format_number(minor_units, currency)
    style = int(rng.integers(3))
    if currency == "USD" and style == 0:
        return f"${number}"
    if style == 2:
        return f"{number} {currency}"
    return f"{currency} {number}"


def _price(rng: np.random.Generator, base_cents: int, currency: str) -> int:
    """A unit price near `base_cents` in the currency's minor units (JPY: whole yen)."""
    cents = int(round(base_cents * float(rng.uniform(0.8, 1.25))))
    return cents if currency != "JPY" else int(round(cents, -1))  # yen ~ cents: 350 -> 350 yen


def _city(rng: np.random.Generator):
    return CITIES[int(rng.integers(len(CITIES)))]


def _postcode(rng: np.random.Generator, country: str) -> str:
    if country == "GB":  # outward + inward code, e.g. LS1 4AP
        letters = string.ascii_uppercase
        return (f"{_pick(rng, ('LS', 'BS', 'M', 'B', 'EH'))}{int(rng.integers(1, 20))} "
                f"{int(rng.integers(1, 10))}{_pick(rng, letters)}{_pick(rng, letters)}")
    if country == "JP":
        return f"{_digits(rng, 3)}-{_digits(rng, 4)}"
    if country == "NL":
        return f"{int(rng.integers(1000, 10000))} {_pick(rng, ('AB', 'CD', 'KL', 'XR'))}"
    return f"{int(rng.integers(10000, 100000))}"


# ---- document kinds ------------------------------------------------------------------------------
def _receipt(rng: np.random.Generator) -> Document:
    store = _pick(rng, STORES)
    if _chance(rng, 0.5):
        store = store.upper()
    city, country, _, currency = _city(rng)
    address = f"{int(rng.integers(1, 400))} {_pick(rng, STREETS)}, {city}"
    date = format_date(random_date(rng, 2019, 2025), _pick(rng, DATE_FORMATS))
    time = f"{int(rng.integers(7, 23)):02d}:{int(rng.integers(0, 60)):02d}"
    lines = [store, _fit(address, MAX_LINE_CHARS), f"{date} {time}"]
    n_items = int(rng.integers(1, 4))
    chosen = rng.choice(len(ITEMS), size=n_items, replace=False)
    total = 0
    for idx in chosen:
        name, base = ITEMS[int(idx)]
        qty = int(rng.integers(1, 4))
        line_total = qty * _price(rng, base, currency)
        total += line_total
        lines.append(f"{qty}x {name} {format_number(line_total, currency)}")
    total_text = format_amount(total, currency, rng)
    lines.append(f"{_pick(rng, ('TOTAL', 'Total', 'AMOUNT DUE'))} {total_text}")
    fields = {"merchant": store, "date": date, "time": time, "total": total_text}
    if _chance(rng, 0.6):
        last4 = _digits(rng, 4)
        lines.append(f"{_pick(rng, ('VISA', 'MASTERCARD', 'AMEX', 'Card'))} ending {last4}")
        fields["card_last4"] = last4
    return Document("receipt", tuple(lines), fields)


def _invoice(rng: np.random.Generator) -> Document:
    payload = _digits(rng, 6)
    invoice_no = f"INV-{payload}{luhn_check_digit(payload)}"
    seller = _fit(company_name(rng), MAX_LINE_CHARS - len("From: "))
    if _chance(rng, 0.5):
        buyer = " ".join(person_name(rng))
    else:
        buyer = company_name(rng)
    buyer = _fit(buyer, MAX_LINE_CHARS - len("Bill to: "))
    fmt = _pick(rng, DATE_FORMATS)
    issued = random_date(rng, 2019, 2025)
    date = format_date(issued, fmt)
    currency = _city(rng)[3]
    lines = [f"INVOICE {invoice_no}", f"From: {seller}", f"Bill to: {buyer}", f"Date: {date}"]
    if _chance(rng, 0.5):
        due = issued + dt.timedelta(days=_pick(rng, (14, 30, 60)))
        lines.append(f"Due: {format_date(due, fmt)}")
    total = 0
    for _ in range(int(rng.integers(1, 3))):
        qty = int(rng.integers(1, 10))
        unit = _price(rng, int(rng.integers(40, 400)) * 100, currency)
        total += qty * unit
        lines.append(f"{_pick(rng, SERVICES)} {qty} x {format_number(unit, currency)}")
    total_text = format_amount(total, currency, rng)
    lines.append(f"Total: {total_text}")
    fields = {"invoice_no": invoice_no, "seller": seller, "buyer": buyer, "date": date,
              "total": total_text}
    return Document("invoice", tuple(lines), fields)


def _id_card(rng: np.random.Generator) -> Document:
    header = _pick(rng, ("IDENTITY CARD", "NATIONAL ID CARD", "RESIDENCE PERMIT",
                         "DRIVING LICENCE"))
    given, surname = person_name(rng)
    fmt = _pick(rng, DATE_FORMATS)
    birth = format_date(random_date(rng, 1950, 2005), fmt)
    expiry = format_date(random_date(rng, 2026, 2035), fmt)
    body = _digits(rng, 9)
    document_no = body + iso7064_mod11_2_check(body)
    nationality = _city(rng)[2]
    lines = [header]
    if _chance(rng, 0.5):  # passport-style: surname in capitals on its own line
        lines += [f"Surname: {surname.upper()}", f"Given names: {given}"]
        fields = {"surname": surname.upper(), "given_names": given}
    else:
        name = f"{given} {surname}"
        lines.append(f"Name: {name}")
        fields = {"name": name}
    lines += [f"Born: {birth}", f"No: {document_no}", f"Expires: {expiry}"]
    fields.update(birth_date=birth, document_no=document_no, expiry_date=expiry)
    if len(fields) < MAX_FIELDS and _chance(rng, 0.5):
        lines.append(f"Sex: {_pick(rng, ('F', 'M', 'X'))} Nat: {nationality}")
        fields["nationality"] = nationality
    return Document("id_card", tuple(lines), fields)


def _shipping_label(rng: np.random.Generator) -> Document:
    given, surname = person_name(rng)
    recipient = f"{given} {surname}" if _chance(rng, 0.7) else f"{given[0]}. {surname}"
    city, country, _, _ = _city(rng)
    street = f"{int(rng.integers(1, 400))} {_pick(rng, STREETS)}"
    postcode = _postcode(rng, country)
    serial = _digits(rng, 8)
    service = _pick(rng, ("RA", "RR", "EE", "CP", "LX"))
    tracking = f"{service}{serial}{s10_check_digit(serial)}{country}"
    kg = int(rng.integers(1, 300)) / 10
    weight = f"{kg:.1f} kg" if _chance(rng, 0.5) else f"{kg:.2f}kg"
    lines = [_pick(rng, ("SHIP TO:", "DELIVER TO:", "TO:")), recipient, street,
             f"{postcode} {city}" if _chance(rng, 0.5) else f"{city} {postcode}",
             f"Tracking: {tracking}", f"Weight: {weight}"]
    if _chance(rng, 0.5):
        lines.append(f"From: {_fit(company_name(rng), MAX_LINE_CHARS - len('From: '))}")
    fields = {"recipient": recipient, "street": street, "postcode": postcode,
              "tracking_no": tracking, "weight": weight}
    return Document("shipping_label", tuple(lines), fields)


def _phone(rng: np.random.Generator, country: str) -> str:
    if country == "US":
        return f"+1 {_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)}"
    if country == "GB":
        return f"+44 20 {_digits(rng, 4)} {_digits(rng, 4)}"
    if country == "JP":
        return f"+81 {_digits(rng, 2)} {_digits(rng, 4)} {_digits(rng, 4)}"
    return f"0{_digits(rng, 3)} {_digits(rng, 6)}"


def _form(rng: np.random.Generator) -> Document:
    given, surname = person_name(rng)
    name = f"{given} {surname}"
    payload = _digits(rng, 9)
    member_id = payload + luhn_check_digit(payload)
    country = _city(rng)[1]
    date = format_date(random_date(rng, 2019, 2025), _pick(rng, DATE_FORMATS))
    lines = [_pick(rng, ("MEMBERSHIP FORM", "REGISTRATION FORM", "APPLICATION FORM")),
             f"Name: {name}", f"Member ID: {member_id}"]
    fields = {"name": name, "member_id": member_id}
    if _chance(rng, 0.7):
        phone = _phone(rng, country)
        lines.append(f"Phone: {phone}")
        fields["phone"] = phone
    if _chance(rng, 0.6):
        email = _fit(f"{given.lower()}.{surname.lower()}@{_pick(rng, MAIL_DOMAINS)}",
                     MAX_LINE_CHARS - len("Email: "))
        lines.append(f"Email: {email}")
        fields["email"] = email
    lines.append(f"Signed: {date}")
    fields["date"] = date
    return Document("form", tuple(lines), fields)


_GENERATORS = {"receipt": _receipt, "invoice": _invoice, "id_card": _id_card,
               "shipping_label": _shipping_label, "form": _form}
assert tuple(_GENERATORS) == KINDS


def ctc_frames(line: str) -> int:
    """Frames a CTC reader needs for `line`: one per character plus one blank per repeated pair."""
    return len(line) + sum(a == b for a, b in zip(line, line[1:]))


def check_document(doc: Document) -> None:
    """Raise AssertionError unless `doc` meets the constraints in the module docstring."""
    assert MIN_LINES <= len(doc.lines) <= MAX_LINES, (doc.kind, doc.lines)
    for line in doc.lines:
        assert line and len(line) <= MAX_LINE_CHARS, (doc.kind, line)
        assert set(line) <= ALLOWED_CHARS, (doc.kind, line)
        assert ctc_frames(line) <= CTC_FRAMES_PER_ROW, (doc.kind, line)
    assert MIN_FIELDS <= len(doc.fields) <= MAX_FIELDS, (doc.kind, doc.fields)
    for name, value in doc.fields.items():
        assert isinstance(value, str) and value and value in doc.text, (doc.kind, name, value)


def generate_document(kind: str, rng: np.random.Generator) -> Document:
    """A document of `kind` (one of KINDS) drawn from `rng`; checked before it is returned."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown document kind {kind!r}; known: {', '.join(KINDS)}")
    doc = _GENERATORS[kind](rng)
    check_document(doc)
    return doc
