"""--cluster-store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"""

from __future__ import annotations

import pytest

from pontoon.store.etcd import DEFAULT_PREFIX, EtcdStore, parse_url


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix"),
    [
        ("etcd://127.0.0.1:2379", [("127.0.0.1", 2379)], DEFAULT_PREFIX),
        ("etcd://10.0.0.1:2379/", [("10.0.0.1", 2379)], DEFAULT_PREFIX),
        ("etcd://etcd-1.lab:4001/mycluster", [("etcd-1.lab", 4001)], "/mycluster"),
        ("etcd://a:1,b:2,c:3/x/y/", [("a", 1), ("b", 2), ("c", 3)], "/x/y"),
        ("ETCD://a", [("a", 2379)], DEFAULT_PREFIX),
        ("etcd://[fd00::1]:2379,[::1]/p", [("fd00::1", 2379), ("::1", 2379)], "/p"),
    ],
)
def test_good_urls(url, endpoints, prefix):
    assert parse_url(url) == (endpoints, prefix)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:2379", "must start with etcd://"),
        ("127.0.0.1:2379", "must start with etcd://"),
        ("etcd://", "names no etcd endpoint"),
        ("etcd:///pontoon", "names no etcd endpoint"),
        ("etcd://a:1,,b:2", "empty endpoint"),
        ("etcd://a:1,", "empty endpoint"),
        ("etcd://a:", "empty port"),
        ("etcd://a:http", "not a number"),
        ("etcd://a:0", "not a number in 1-65535"),
        ("etcd://a:65536", "not a number in 1-65535"),
        ("etcd://:2379", "bad host"),
        ("etcd://a_b:2379", "bad host"),
        ("etcd://fd00::1:2379", "in brackets"),
        ("etcd://[fd00::1:2379", "bad IPv6"),
        ("etcd://[zz::1]:2379", "bad IPv6"),
        ("etcd://[::1]2379", "bad IPv6"),
        ("etcd://user:pw@a:2379", "credentials"),
        ("etcd://a:2379/p?x=1", "query"),
        ("etcd://a:2379//p", "bad prefix segment ''"),
        ("etcd://a:2379/p q", "spaces"),
        ("etcd://a:2379/p/ü", "bad prefix segment"),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")) as info:
        parse_url(url)
    assert url in str(info.value)


def test_from_url():
    store = EtcdStore.from_url("etcd://a:1,b:2/c", timeout=1.5)
    assert (store.endpoints, store.prefix, store.timeout) == ([("a", 1), ("b", 2)], "/c", 1.5)
    assert store.endpoint == ("a", 1)
