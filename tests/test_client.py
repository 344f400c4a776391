"""The client SDK against a real uvicorn on a loopback port."""

import asyncio
import time

import httpx
import pytest

from lorif_serve.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InvalidRequestError,
    RetryPolicy,
    ServiceUnavailableError,
)
from lorif_serve.client.cli import main as cli_main
from lorif_serve.indexer import IndexReader
from tests.builders import LiveServer, brute_force, make_app


@pytest.fixture
def live(index_path):
    app, fake = make_app(index_path)
    with LiveServer(app) as server:
        server.fake = fake
        yield server


def test_happy_path_sync_and_async(live, index_path):
    scores, ids = brute_force(index_path, live.fake, [("the", "market rose"), ("", "goal")])
    with Client(live.url) as client:
        assert client.health().status == "ready"
        info = client.index_info()
        assert info.n_examples == len(ids)
        one = client.attribute("the", "market rose", top_k=3, opponents=True)
        assert [r.id for r in one.results] == [ids[i] for i in scores[0].topk(3).indices.tolist()]
        assert one.opponents and len(one.opponents) == 3
        batch = client.attribute_batch(
            [
                {"prompt": "the", "completion": "market rose", "top_k": 3},
                {"completion": "goal", "top_k": 2},
            ]
        )
        assert [r.id for r in batch.batch[1].results] == [
            ids[i] for i in scores[1].topk(2).indices.tolist()
        ]

    async def run():
        async with AsyncClient(live.url) as client:
            return await asyncio.gather(*(client.attribute("", "goal", top_k=2) for _ in range(4)))

    for answer in asyncio.run(run()):
        assert [r.id for r in answer.results] == [r.id for r in batch.batch[1].results]


def test_retries_on_503_honouring_retry_after(live):
    calls = []
    real = httpx.Client(base_url=live.url)

    def flaky(request):
        calls.append(time.perf_counter())
        if len(calls) <= 2:
            return httpx.Response(
                503,
                headers={"Retry-After": "0.2"},
                json={"title": "Service Unavailable", "status": 503, "detail": "busy"},
            )
        return real.request(
            request.method,
            request.url.path,
            content=request.content,
            headers={"content-type": "application/json"},
        )

    with Client(live.url, transport=httpx.MockTransport(flaky)) as client:
        answer = client.attribute("", "goal", top_k=1)
    assert len(answer.results) == 1 and len(calls) == 3
    assert calls[1] - calls[0] >= 0.19 and calls[2] - calls[1] >= 0.19
    # Out of retries: the typed error carries the problem details.
    always = httpx.MockTransport(
        lambda r: httpx.Response(
            503,
            headers={"Retry-After": "100"},
            json={"title": "x", "status": 503, "detail": "busy"},
        )
    )
    began = time.perf_counter()
    with Client(
        live.url, transport=always, retry=RetryPolicy(max_retries=2, max_delay=0.05)
    ) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            client.attribute("", "goal")
    assert (
        caught.value.problem.detail == "busy" and time.perf_counter() - began < 2
    )  # Retry-After capped


def test_connection_errors_are_retried_then_typed():
    attempts = []

    def refuse(request):
        attempts.append(request)
        raise httpx.ConnectError("refused", request=request)

    policy = RetryPolicy(max_retries=2, initial_delay=0.01)
    with Client(
        "http://127.0.0.1:9", transport=httpx.MockTransport(refuse), retry=policy
    ) as client:
        with pytest.raises(APIConnectionError):
            client.health()
    assert len(attempts) == 3


def test_timeout(index_path):
    app, _ = make_app(index_path, delay=1.0)
    with (
        LiveServer(app) as server,
        Client(server.url, timeout=0.2, retry=RetryPolicy(max_retries=0)) as client,
    ):
        with pytest.raises(APITimeoutError):
            client.attribute("", "slow")


def test_auth_and_typed_errors(index_path, monkeypatch):
    app, _ = make_app(index_path, api_keys=["secret"])
    with LiveServer(app) as server:
        with Client(server.url) as client, pytest.raises(AuthenticationError) as caught:
            client.attribute("", "goal")
        assert caught.value.status == 401
        with Client(server.url, api_key="secret") as client:
            assert client.attribute("", "goal", top_k=1).results
            with pytest.raises(BadRequestError, match="not tracked"):
                client.attribute("", "goal", layers=["nope"])
        monkeypatch.setenv("LORIF_API_KEY", "secret")
        with Client(server.url) as client:
            assert client.index_info().n_examples > 0


def test_cli_prints_a_table(live, capsys):
    assert (
        cli_main(
            [
                "query",
                "--url",
                live.url,
                "--prompt",
                "the",
                "--completion",
                "market",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "proponents" in out and out.count("doc") >= 3
    assert "metadata" in out and "topic=t" in out  # the example's metadata column
    assert cli_main(["query", "--url", live.url, "--completion", "xy", "--json"]) == 0
    assert '"results"' in capsys.readouterr().out
    assert (
        cli_main(["query", "--url", "http://127.0.0.1:9", "--completion", "x", "--timeout", "0.2"])
        == 1
    )


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda c: c.attribute("", ""), "completion"),
        (lambda c: c.attribute("", "goal", top_k=0), "top_k: Input should be greater"),
        (lambda c: c.attribute_batch([{"completion": "x", "surprise": 1}]), "surprise"),
    ],
)
def test_invalid_queries_fail_before_sending(call, fragment):
    sent = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    with Client("http://127.0.0.1:9", transport=transport) as client:
        with pytest.raises(InvalidRequestError) as caught:
            call(client)
    assert isinstance(caught.value, BadRequestError) and caught.value.status == 422
    assert fragment in str(caught.value) and not sent


def test_url_without_a_scheme_means_http(live):
    with Client(live.url.removeprefix("http://")) as client:
        assert client.health().status == "ready"
    with pytest.raises(InvalidRequestError, match="http:// or https://"):
        Client("ftp://example.org")


def test_transport_errors_name_the_url_and_attempts():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    policy = RetryPolicy(max_retries=2, initial_delay=0.01)
    with Client("127.0.0.1:9", transport=httpx.MockTransport(refuse), retry=policy) as client:
        with pytest.raises(APIConnectionError) as caught:
            client.health()
    message = str(caught.value)
    assert "cannot reach http://127.0.0.1:9/readyz (connection refused)" in message
    assert "after 3 attempts" in message


def test_retries_stop_at_the_total_time_budget():
    """A server that never answers costs one timeout in all, not one per attempt."""

    def slow_refusal(request):
        time.sleep(0.15)
        raise httpx.ConnectTimeout("timed out", request=request)

    policy = RetryPolicy(max_retries=50, initial_delay=0.01, max_delay=0.02)
    began = time.perf_counter()
    with Client(
        "http://127.0.0.1:9", timeout=0.5, transport=httpx.MockTransport(slow_refusal), retry=policy
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            client.health()
    assert time.perf_counter() - began < 0.5 + 0.15 + 0.1
    assert "attempts" in str(caught.value)


def test_cli_bad_arguments_are_one_line(capsys):
    assert cli_main(["query", "--url", "127.0.0.1:9", "--completion", "x", "--top-k", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 422") and "top_k" in err and "Traceback" not in err


def test_filters_from_the_client_and_the_cli(live, index_path, capsys):
    with IndexReader(index_path) as reader:
        topics = [r.metadata["topic"] for r in reader.examples(list(range(reader.n_examples)))]
    with Client(live.url) as client:
        sport = client.attribute("the", "market rose", top_k=50, filter={"topic": "t1"})
        few = client.attribute("the", "market rose", top_k=50, filter={"id": {"prefix": "doc28"}})
        some = client.attribute(
            "the", "market rose", top_k=50, filter={"topic": {"in": ["t0", "t2"]}}
        )
        with pytest.raises(BadRequestError, match="colour"):
            client.attribute("the", "market rose", filter={"colour": "red"})
        with pytest.raises(BadRequestError, match="explain"):  # a server without a model
            client.attribute("the", "market rose", explain=True)
    assert sport.results and {r.metadata["topic"] for r in sport.results} == {"t1"}
    assert sport.query.matching == topics.count("t1") and len(sport.results) == 50
    assert {r.metadata["topic"] for r in some.results} == {"t0", "t2"}
    args = ["query", "--url", live.url, "--completion", "market", "--top-k", "40"]
    assert cli_main([*args, "--filter", "topic=t2", "--filter", '{"chunk": 0}']) == 0
    out = capsys.readouterr().out
    assert "topic=t2" in out and "topic=t0" not in out and "topic=t1" not in out
    with pytest.raises(SystemExit, match="field=value"):
        cli_main([*args, "--filter", "topic"])
    assert [r.id for r in few.results] == sorted(
        [r.id for r in few.results], key=lambda i: -next(x.score for x in few.results if x.id == i)
    )
    assert {r.id.split("#")[0] for r in few.results} == {"doc28"}
    assert few.query.matching == len(few.results) < 50
