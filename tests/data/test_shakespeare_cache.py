"""The parsed plays are cached on disk under the archive's and the parser's hash: read
back, they give exactly the clients a fresh parse gives; a damaged cache is parsed again."""

from fedgpt.data import shakespeare as sh


def fresh():
    sh._parsed.cache_clear()
    sh._play_speeches.cache_clear()
    return sh.shakespeare_clients(min_chars=1)


def test_the_cached_plays_give_the_clients_a_parse_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGPT_HOME", str(tmp_path))
    parsed = fresh()
    (cache,) = (tmp_path / "cache").glob("shakespeare-*.json")
    calls = []
    monkeypatch.setattr(sh, "parse_play", lambda *a: calls.append(a) or [])
    again = fresh()
    assert not calls and again == parsed  # nothing parsed: all read back, all equal
    cache.write_text('{"lear": [["KENT", 3]]')  # damaged
    monkeypatch.undo()
    monkeypatch.setenv("FEDGPT_HOME", str(tmp_path))
    assert fresh() == parsed
    sh._parsed.cache_clear()
    sh._play_speeches.cache_clear()
