"""`lorabench env`: the package sets a cell's train worker may run in (a spec's `env`).

    lorabench env list              the definitions under harness/envs/ and the created environments
    lorabench env create NAME|PINS  resolve with uv against constraints.txt and install (once; cached)
    lorabench env remove NAME       delete a created environment's directories
"""

from __future__ import annotations

from harness.errors import UserError


def add_parser(parser) -> None:
    sub = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="definitions under harness/envs/ and created environments")
    p = sub.add_parser("create", help="create an environment (a name under harness/envs/ or pins like "
                                      "peft==0.21.2); a cached one is reused")
    p.add_argument("name", metavar="NAME|PINS")
    p = sub.add_parser("remove", help="delete a created environment (every cached version of it)")
    p.add_argument("name", metavar="NAME")


def run(args) -> int:
    return {"list": _list, "create": _create, "remove": _remove}[args.env_command](args)


def _list(args) -> int:
    from harness.config.envs import available, load_env
    from harness.run.environments import created

    made = created()
    print("defined (harness/envs/):")
    for name in available() or ["(none)"]:
        pins = " ".join(f"{n}=={v}" for n, v in load_env(name).packages) if name != "(none)" else ""
        print(f"  {name:<24} {pins}")
    print("created (.cache/envs/):")
    for env in made:
        print(f"  {env['name']:<24} lock {env['lock_sha256'][:12]}  {env['disk_mib']:.1f} MiB  "
              f"over the main environment: {' '.join(env['installed']) or 'nothing'}")
    if not made:
        print("  (none)")
    return 0


def _create(args) -> int:
    from harness.config.envs import load_env
    from harness.run.environments import ensure, find

    definition = load_env(args.name)
    cached = find(definition)
    env = cached or ensure(definition, log=print)
    versions = " ".join(f"{n}={v}" for n, v in env.packages.items() if v)
    print(f"env {env.name}: {'cached' if cached else 'created'} at {env.path} (lock {env.lock_sha256[:12]}); "
          f"{versions}")
    return 0


def _remove(args) -> int:
    from harness.run.environments import remove

    gone = remove(args.name)
    if not gone:
        raise UserError(f"env {args.name!r}: no created environment of that name (see lorabench env list)")
    for path in gone:
        print(f"removed {path}")
    return 0
