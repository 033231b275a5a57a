"""The README's permission table is the code's matrix, cell for cell."""

from __future__ import annotations

from pathlib import Path

from archiver.identity.services import ROLE_PERMISSIONS, Permission, Role


def test_readme_mirrors_the_permission_matrix() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("<!-- permission-matrix -->")[1].split("<!-- /permission-matrix -->")[0]
    rows = [line for line in table.strip().splitlines() if line.startswith("| `")]
    header = [cell.strip(" `") for cell in table.strip().splitlines()[0].strip("|").split("|")][1:]
    assert header == [role.value for role in Role]
    found = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        permission = Permission(cells[0].strip("`"))
        found[permission] = {
            Role(r) for r, cell in zip(header, cells[1:], strict=True) if cell == "✓"
        }
    assert set(found) == set(Permission)
    for permission, roles in found.items():
        assert roles == {role for role in Role if permission in ROLE_PERMISSIONS[role]}, permission
