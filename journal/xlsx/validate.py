"""The whole-part XML check that runs in a child process beside a rewrite (see :class:`.edit.Validator`).

The parent starts it as ``python -I -S .../journal/xlsx/validate.py WORKBOOK MEMBER``: by its
file path, isolated and without ``site``, so the child starts in ~50 ms and runs exactly this
checkout's file (nothing but the standard library is importable there, and nothing else is
imported here).  ``python -m journal.xlsx.validate WORKBOOK MEMBER`` does the same.

Exit status 0: the member is well-formed XML without comments, processing instructions, CDATA
or a DOCTYPE.  3: it is not, and stdout says why (the parent refuses the write).  Anything else
means the check itself failed; the parent then checks the part in process.
"""

from __future__ import annotations

import sys
import zipfile
import zlib
from xml.parsers import expat


def check(path: str, member: str) -> str | None:
    """Why ``member`` of the zip ``path`` cannot be edited, or None when it can."""
    p = expat.ParserCreate()
    odd: list[str] = []
    p.CommentHandler = lambda *a: odd.append("an XML comment")
    p.ProcessingInstructionHandler = lambda *a: odd.append("a processing instruction")
    p.StartCdataSectionHandler = lambda *a: odd.append("a CDATA section")
    p.StartDoctypeDeclHandler = lambda *a: odd.append("a DOCTYPE")
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            while not odd:
                b = f.read(1 << 22)
                p.Parse(b, not b)
                if not b:
                    break
    except expat.ExpatError as e:
        return f"is not well-formed XML ({e})"
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as e:
        return f"cannot be inflated ({e})"
    if odd:
        return f"holds {odd[0]}, which sop does not edit"
    return None


def main(argv: list[str]) -> int:
    problem = check(argv[0], argv[1])
    if problem is None:
        return 0
    print(problem)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
