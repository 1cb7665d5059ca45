import random
import pytest

@pytest.mark.parametrize("seed", [1, 2])
def test_extreme_quality(engine, seed, tmp_path):
    import datetime as dt
    import pyarrow as pa
    from medlake.cdm import store
    from medlake.landing.ingest import staging_schemas
    from medlake.transform.run import transform
    from medlake.quality import runner
    from tests.spec import test_transform as tt
    store.init(engine, "5.4"); tt.vocab(engine)
    random.seed(seed)
    exec(open('/tmp/fz/tx_extreme_body.py').read(), {"tt": tt, "engine": engine, "random": random, "dt": dt, "pa": pa, "staging_schemas": staging_schemas})
    transform(engine, namespaces=tt.NS)
    r = runner.run(engine, "5.4", tmp_path / "q")
    errs = [(x["check_id"], (x.get("error") or "")[:200]) for x in r.results if x["status"] == "error"]
    assert not errs, errs[:5]
