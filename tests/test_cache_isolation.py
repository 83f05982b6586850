"""The suite never writes into the user's cache (the developers' guide: tests write only
into temporary directories)."""

import os
import tempfile


def test_the_cache_of_every_test_is_a_temporary_directory():
    cache = os.environ["DFFORENSICS_CACHE"]
    assert os.path.realpath(cache).startswith(os.path.realpath(tempfile.gettempdir()))
    assert not os.path.realpath(cache).startswith(os.path.realpath(os.path.expanduser("~/.cache")))


def test_the_dump_cache_resolves_to_that_directory():
    from dfforensics.inputs.formats import cache_dir

    assert os.path.realpath(cache_dir()) == os.path.realpath(os.environ["DFFORENSICS_CACHE"])
