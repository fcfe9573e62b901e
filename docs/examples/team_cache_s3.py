"""A team cache in an S3 bucket, with each member's own local layer in front of it.

``fleche.cache([local_dir, s3_layer], write="through")`` makes a layered cache:

- reads try the local directory first, then the bucket;
- a hit in the bucket is copied into the local directory, so the next hit
  costs no request at all;
- with ``write="through"``, what one member computes goes to their local
  directory *and* to the bucket, where everyone else finds it.
  (The default, ``write="first"``, would keep new results local.)

Run it as two team members, each with their own local directory: the first
computes, the second computes nothing and fills their local layer from S3.

    python docs/examples/team_cache_s3.py --bucket team-bucket --local alice --member alice --small
    python docs/examples/team_cache_s3.py --bucket team-bucket --local bob --member bob --small

The endpoint comes from ``--endpoint-url`` or the ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` variables (none: AWS itself), credentials from the usual
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``. fleche
never creates buckets (a typo must not start an empty cache somewhere): pass
``--create-bucket`` to make one, e.g. on a local test server::

    pip install "fleche[s3]" "moto[server]"
    moto_server -p 5000 &
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    python docs/examples/team_cache_s3.py --endpoint-url http://127.0.0.1:5000 \\
        --bucket team-bucket --create-bucket --local alice --member alice --small

``--small`` runs 4 calls instead of 20.
"""

from __future__ import annotations

import argparse
import getpass
import os
import time

import fleche

# How often the body ran in this process: what "computed" below reports.
computed: list[int] = []


@fleche.fleche(version=1)
def spectrum(n: int, damping: float = 0.05) -> list[float]:
    """The first n modes of a damped string: slow enough that nobody should compute it twice."""
    computed.append(n)
    time.sleep(0.05)  # stands in for a real computation
    return [k * (1 - damping) ** k for k in range(1, n + 1)]


def count(layer: fleche.Cache) -> int:
    """How many calls of ``spectrum`` one layer holds: fleche.query on that layer alone."""
    return fleche.query(spectrum, cache=layer).count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True, help="the team's bucket (must exist)")
    parser.add_argument("--prefix", default="fleche", help="the cache's prefix in the bucket")
    parser.add_argument("--local", required=True, help="this member's local cache directory")
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        help="an S3-compatible server (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, or AWS)",
    )
    parser.add_argument("--member", default=getpass.getuser(), help="a name to tag results with")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket first")
    parser.add_argument("--small", action="store_true", help="4 calls instead of 20")
    args = parser.parse_args()

    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    if args.create_bucket:
        import s3fs  # installed with fleche[s3]

        fs = s3fs.S3FileSystem(client_kwargs=options)
        if not fs.exists(args.bucket):
            fs.mkdir(args.bucket)

    layers = [
        args.local,  # nearest first: read before the bucket, filled from it
        {"url": f"s3://{args.bucket}/{args.prefix}", "storage_options": options},
    ]
    try:
        activation = fleche.cache(layers, write="through")
    except fleche.ConfigError as e:  # a missing bucket, a bad option: say so in one line
        parser.exit(1, f"{e}\n")
    with activation as team:
        local, shared = team.layers
        print(f"cache: {team.url}")
        print(f"before: local layer holds {count(local)} calls, S3 holds {count(shared)}")

        sizes = range(10, 14) if args.small else range(10, 30)
        t0 = time.perf_counter()
        with fleche.tags(member=args.member):
            results = [spectrum(n) for n in sizes]
        print(
            f"{len(results)} calls: computed {len(computed)} here, "
            f"{len(results) - len(computed)} from the cache, in {time.perf_counter() - t0:.2f} s"
        )
        print(f"after: local layer holds {count(local)} calls, S3 holds {count(shared)}")

        # Whoever computed a result, its record says who, where and when.
        meta = spectrum.call(sizes[0]).metadata
        print(f"spectrum({sizes[0]}) was computed by {meta['tags']['member']} on {meta['host']}")


if __name__ == "__main__":
    main()
