"""The auto-responder end to end: the real daemon on the mock carrier, the
fake OpenAI server as the LLM, callers simulated with mock.inbound/mock.say.
A few flows that need to watch the carrier side closely run in-process."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from daemon import Daemon, merge

from voicecalld.calls import EventType
from voicecalld.responder import Responder
from voicecalld.testing.fake_openai import FakeOpenAI

CALLER = "+15550002222"
GREETING = "Hello, you have reached the voice assistant. How can I help?"
APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again?"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-test") as f:
        yield f


def llm_config(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return merge({"inboundPolicy": "open", "responseBaseUrl": fake.base_url, "responseApiKey": "sk-test",
                  "responseTimeoutMs": 5000}, extra)


def lines(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["speaker"], t["text"]) for t in record["transcript"]]


def inbound(d: Daemon) -> str:
    call_id = d.rpc("mock.inbound", {"from": CALLER})["callId"]
    d.wait_state(call_id, "listening")  # the greeting has played
    return call_id


def wait_lines(d: Daemon, call_id: str, n: int) -> dict[str, Any]:
    return d.wait(lambda: len((r := d.rpc("voicecall.status", {"callId": call_id}))["transcript"]) >= n and r,
                  what=f"{n} transcript entries on {call_id}")


def wait_log(d: Daemon, text: str, count: int = 1) -> None:
    """Wait for the daemon to log ``text`` (``count`` times): the positive
    signal that the responder has dealt with a turn, where the outcome to
    check is that nothing was said. Debug lines need the daemon run with -v."""
    d.wait(lambda: d.log().count(text) >= count, what=f"{text!r} x{count} in the daemon log")


def say_and_wait(d: Daemon, call_id: str, text: str, reply: str | None = None) -> dict[str, Any]:
    """Say ``text``; the record once the bot's reply line is there (once it
    reads ``reply``, when given: a reply is spoken, and its line grows,
    sentence by sentence)."""
    before = len(d.rpc("voicecall.status", {"callId": call_id})["transcript"])
    d.rpc("mock.say", {"callId": call_id, "text": text})
    if reply is None:
        return wait_lines(d, call_id, before + 2)
    return d.wait(lambda: lines(r := d.rpc("voicecall.status", {"callId": call_id}))[before + 1:] == [
        ("bot", reply)] and r, what=f"the reply {reply!r}")


def test_inbound_call_is_answered_by_the_llm_over_several_turns(start_daemon, fake) -> None:
    fake.chat_replies.put("Hi! What can I do for you?")
    fake.chat_replies.put("**Sure**, your table is booked for `7 pm`.\n\n- see you then")
    d = start_daemon(llm_config(fake))
    call_id = inbound(d)
    say_and_wait(d, call_id, "hello", "Hi! What can I do for you?")
    record = say_and_wait(d, call_id, "book a table at seven", "Sure, your table is booked for 7 pm. see you then.")
    assert lines(record) == [
        ("bot", GREETING), ("user", "hello"), ("bot", "Hi! What can I do for you?"),
        ("user", "book a table at seven"), ("bot", "Sure, your table is booked for 7 pm. see you then."),
    ]
    assert d.wait_state(call_id, "listening")  # the reply played; the call goes on, listening
    first, second = fake.chat_requests
    assert first.headers["Authorization"] == "Bearer sk-test"
    assert first.body["model"] == "gpt-4o-mini"  # "openai/" stripped, or the API answers 404
    system = first.body["messages"][0]
    assert system["role"] == "system" and CALLER in system["content"]
    assert first.body["messages"][1:] == [{"role": "assistant", "content": GREETING},
                                          {"role": "user", "content": "hello"}]
    assert second.body["messages"][-2:] == [{"role": "assistant", "content": "Hi! What can I do for you?"},
                                            {"role": "user", "content": "book a table at seven"}]
    assert [t["function"]["name"] for t in first.body["tools"]] == ["hang_up"]
    assert all(r.status == 200 for r in fake.chat_requests)


def test_failures_give_the_apology_and_keep_the_call(start_daemon, fake) -> None:
    d = start_daemon(llm_config(fake, responseTimeoutMs=300, responseSystemPrompt="Be brief with {caller}."))
    call_id = inbound(d)
    fake.chat_replies.put({"content": "too late", "delay": 3})               # timeout
    assert lines(say_and_wait(d, call_id, "one"))[-1] == ("bot", APOLOGY)
    fake.inject_error("chat", status=500)                                    # server error
    assert lines(say_and_wait(d, call_id, "two"))[-1] == ("bot", APOLOGY)
    fake.chat_replies.put({"error": {"status": 429, "code": "rate_limit_exceeded", "message": "slow down"}})
    assert lines(say_and_wait(d, call_id, "three"))[-1] == ("bot", APOLOGY)
    fake.chat_replies.put("```\n```")                                       # nothing left to say
    assert lines(say_and_wait(d, call_id, "four"))[-1] == ("bot", APOLOGY)
    fake.chat_replies.put("Back on track.")
    record = say_and_wait(d, call_id, "five")
    assert lines(record)[-1] == ("bot", "Back on track.")
    d.wait_state(call_id, "listening")
    assert fake.chat_requests[0].body["messages"][0]["content"] == f"Be brief with {CALLER}."
    log = d.log()
    assert "HTTP 500" in log and "HTTP 429" in log and "no reply within 300 ms" in log
    assert "Traceback" not in log and "sk-test" not in log


def test_hang_up_tool_says_goodbye_and_ends_as_hangup_bot(start_daemon, fake) -> None:
    fake.chat_replies.put({"content": "Goodbye, have a nice day!", "tool_call": {"name": "hang_up", "arguments": {}}})
    d = start_daemon(llm_config(fake))
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "that's all, bye"})
    record = d.wait_state(call_id, "hangup-bot")
    assert record["endReason"] == "hangup-bot"
    assert lines(record)[-2:] == [("user", "that's all, bye"), ("bot", "Goodbye, have a nice day!")]


def test_goodbye_plays_before_the_line_is_closed(make_engine, fake) -> None:
    e = make_engine(inboundPolicy="open", responseBaseUrl=fake.base_url, responseApiKey="sk-test")
    seen: list[str] = []
    emit, hangup = e.provider.emit, e.provider.hangup
    e.provider.emit = lambda ev: (seen.append(f"{ev.type}:{ev.utterance_id}"), emit(ev))[1]  # type: ignore
    e.provider.hangup = lambda rec: (seen.append("hangup"), hangup(rec))[1]  # type: ignore
    responder = Responder(e.manager, e.bus)
    try:
        fake.chat_replies.put({"tool_call": {"name": "hang_up", "arguments": {"goodbye": "Bye **now**!"}}})
        call_id = e.provider.inbound(CALLER, None)["callId"]
        e.wait_state(call_id, "listening")
        e.provider.say(call_id, "bye")
        record = e.wait_state(call_id, "hangup-bot")
        assert lines(record)[-1] == ("bot", "Bye now!")
        assert seen.index(f"{EventType.PLAYED}:u2") < seen.index("hangup")
        # Nothing more is answered on a call whose goodbye is playing.
        assert len(fake.chat_requests) == 1
    finally:
        responder.stop()


def test_the_request_runs_on_the_responder_pool_without_a_lock(make_engine, fake) -> None:
    import threading
    import uuid

    from voicecalld.calls import CallEvent

    e = make_engine(inboundPolicy="open", responseBaseUrl=fake.base_url, responseApiKey="sk-test")
    responder = Responder(e.manager, e.bus)
    threads: list[str] = []
    real = responder._stream_reply
    responder._stream_reply = lambda *a, **k: (threads.append(threading.current_thread().name), real(*a, **k))[1]  # type: ignore[method-assign]
    fake.chat_replies.put({"content": "Slow reply.", "delay": 0.5})
    try:
        call_id = e.provider.inbound(CALLER, None)["callId"]
        e.wait_state(call_id, "listening")
        e.manager.handle_event(CallEvent(EventType.SPEECH, uuid.uuid4().hex, call_id=call_id, transcript="hi"))
        # handle_event (a webhook thread, in the daemon) is back before the model has answered...
        assert lines(e.manager.status(call_id))[-1] == ("user", "hi")
        e.wait(lambda: len(fake.chat_requests) == 1, what="the request")
        # ...and while the request is in flight, the call's lock is free.
        assert not fake.chat_requests[0].finished.is_set()  # not answered yet
        e.manager.speak(call_id, "One moment.")
        e.wait(lambda: lines(e.manager.status(call_id))[-1] == ("bot", "Slow reply."), what="the reply")
        assert len(threads) == 1 and threads[0].startswith("responder-")
    finally:
        responder.stop()


def test_speech_while_the_model_thinks_gets_one_reply_to_all_of_it(start_daemon, fake) -> None:
    fake.chat_replies.put({"content": "Stale answer to one.", "delay": 0.6})
    fake.chat_replies.put("One reply to both.")
    d = start_daemon(llm_config(fake), args=["-v"])
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "one"})
    d.wait(lambda: len(fake.chat_requests) == 1, what="the first request")
    d.rpc("mock.say", {"callId": call_id, "text": "two"})
    record = wait_lines(d, call_id, 4)
    assert lines(record) == [("bot", GREETING), ("user", "one"), ("user", "two"), ("bot", "One reply to both.")]
    assert len(fake.chat_requests) == 2
    assert fake.chat_requests[1].body["messages"][-1] == {"role": "user", "content": "one two"}
    d.wait(lambda: fake.chat_requests[0].status == 200, what="the stale reply to arrive")
    # ...and it was dropped, the turn asked again with everything said:
    wait_log(d, f"call {call_id}: caller spoke again; asking again with the whole turn")
    # The turn is over once its one reply has been dealt with.
    wait_log(d, f"call {call_id}: turn answered in")
    assert lines(d.rpc("voicecall.status", {"callId": call_id})) == lines(record)
    assert len(fake.chat_requests) == 2


def test_a_call_that_ends_while_the_model_thinks_gets_nothing(start_daemon, fake) -> None:
    fake.chat_replies.put({"content": "Too late for this.", "delay": 0.5})
    d = start_daemon(llm_config(fake), args=["-v"])
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "hello?"})
    d.wait(lambda: len(fake.chat_requests) == 1, what="the request")
    d.rpc("mock.hangup", {"callId": call_id})
    d.wait_state(call_id, "hangup-user")
    # The request is cancelled: the connection closed while the model is still at it.
    wait_log(d, f"call {call_id}: the reply stopped (the call ended)")
    assert fake.chat_requests[0].finished.wait(10) and fake.chat_requests[0].client_left
    wait_log(d, f"call {call_id}: turn answered in")  # the worker is done with the call
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert lines(record)[-1] == ("user", "hello?") and record["endReason"] == "hangup-user"
    assert "Traceback" not in d.log() and "WARNING" not in d.log()


def test_only_inbound_and_conversation_calls_and_unclaimed_speech_are_answered(start_daemon, fake) -> None:
    d = start_daemon(llm_config(fake, maxConcurrentCalls=2, outbound={"notifyHangupDelaySec": 2},
                                mock={"calleeReplies": ["fine"]}), args=["-v"])
    conv = d.rpc("voicecall.initiate", {"message": "How are you?", "mode": "conversation"})["callId"]
    d.wait_state(conv, "listening")
    assert d.rpc("voicecall.continue", {"callId": conv, "message": "Really?"})["transcript"] == "fine"
    notify = d.rpc("voicecall.initiate", {"message": "Build failed.", "mode": "notify"})["callId"]
    d.wait_state(notify, "speaking")  # the message is playing (a notify call stays so until its hang-up)
    d.rpc("mock.say", {"callId": notify, "text": "what?"})
    wait_lines(d, notify, 2)
    wait_log(d, f"call {notify}: no automatic reply: the call ended, or is neither inbound nor a conversation")
    assert fake.chat_requests == []  # continue claimed "fine"; notify calls are not conversations
    assert lines(d.rpc("voicecall.status", {"callId": notify}))[-1] == ("user", "what?")
    d.rpc("voicecall.end", {"callId": conv})
    d.rpc("voicecall.end", {"callId": notify})


def test_a_server_without_function_calling_is_used_without_the_tool(start_daemon, fake) -> None:
    fake.inject_error("chat", status=400, message="tools param requires --jinja flag")
    fake.chat_replies.put("Works without tools.")
    fake.chat_replies.put("Still fine.")
    d = start_daemon(llm_config(fake))
    call_id = inbound(d)
    assert lines(say_and_wait(d, call_id, "hi"))[-1] == ("bot", "Works without tools.")
    assert lines(say_and_wait(d, call_id, "again"))[-1] == ("bot", "Still fine.")
    assert ["tools" in r.body for r in fake.chat_requests] == [True, False, False]


def test_a_local_server_needs_no_key(start_daemon) -> None:
    with FakeOpenAI(api_key="") as local:  # a server that checks nothing (the fake then accepts any key)
        local._check_auth = lambda request: None  # type: ignore[method-assign]
        local.chat_replies.put("Local model here.")
        d = start_daemon({"inboundPolicy": "open", "responseBaseUrl": local.base_url,
                          "responseModel": "llamacpp/qwen2.5-7b-instruct"})
        call_id = inbound(d)
        assert lines(say_and_wait(d, call_id, "hi"))[-1] == ("bot", "Local model here.")
        (request,) = local.chat_requests
        assert "Authorization" not in request.headers and request.body["model"] == "qwen2.5-7b-instruct"


def test_without_a_key_for_the_openai_api_the_responder_stays_quiet(make_engine, caplog) -> None:
    e = make_engine(inboundPolicy="open")  # default responseBaseUrl, no key anywhere
    with caplog.at_level("INFO", logger="voicecalld.responder"):
        responder = Responder(e.manager, e.bus)
    caplog.set_level("DEBUG", logger="voicecalld.responder")
    assert "automatic replies are off" in caplog.text  # said at start-up
    # Information on the mock carrier (first runs and demos), a warning on a real one.
    assert [r.levelname for r in caplog.records if "automatic replies" in r.getMessage()] == ["INFO"]
    responder._session.post = lambda *a, **k: pytest.fail("no request may be sent")  # type: ignore
    try:
        call_id = e.provider.inbound(CALLER, None)["callId"]
        e.wait_state(call_id, "listening")
        e.provider.say(call_id, "hello")
        e.wait(lambda: len(e.manager.status(call_id)["transcript"]) == 2, what="the caller's words")
        e.wait(lambda: f"call {call_id}: caller turn left unanswered: the responder is without an API key"
               in caplog.text, what="the responder to pass the turn by")
        assert lines(e.manager.status(call_id))[-1] == ("user", "hello")  # no apology into the call
        assert caplog.text.count("automatic replies are off") == 1
    finally:
        responder.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", ["refused", "not-a-completion", "not-json"])
def test_an_unusable_endpoint_gives_the_apology(make_engine, fake, fault: str, caplog) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1" if fault == "refused" else fake.base_url
    e = make_engine(inboundPolicy="open", responseBaseUrl=base, responseApiKey="sk-test")
    responder = Responder(e.manager, e.bus)
    if fault != "refused":
        real = responder._session.post

        def post(*args: Any, **kwargs: Any) -> Any:
            response = real(*args, **kwargs)
            response.close()  # a server that answers with one body that is not a completion
            response.headers["Content-Type"] = "application/json"
            response._content = b'{"choices": []}' if fault == "not-a-completion" else b"<html>oops</html>"
            return response

        responder._session.post = post  # type: ignore[method-assign]
    try:
        call_id = e.provider.inbound(CALLER, None)["callId"]
        e.wait_state(call_id, "listening")
        e.provider.say(call_id, "hello")
        e.wait(lambda: len(e.manager.status(call_id)["transcript"]) == 3, what="the apology")
        assert lines(e.manager.status(call_id))[-1] == ("bot", APOLOGY)
        e.wait_state(call_id, "listening")
        expected = {"refused": "cannot reach", "not-a-completion": "no choices[0].message",
                    "not-json": "not JSON"}[fault]
        assert expected in caplog.text
    finally:
        responder.stop()


# --- responder = "socket": an external agent answers ------------------------------------------------


class Events:
    """An events.subscribe connection."""

    def __init__(self, d: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(d.socket_path)
        self.buf = b""
        self.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe","params":{}}\n')
        assert self.next()["result"] == {"subscribed": True}

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed the events connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def until(self, name: str) -> dict[str, Any]:
        while True:
            message = self.next()
            if message.get("method") == "event" and message["params"]["event"] == name:
                return message["params"]

    def close(self) -> None:
        self.sock.close()


def test_socket_mode_an_agent_answers_over_the_control_socket(start_daemon, fake) -> None:
    d = start_daemon(llm_config(fake, responder="socket", responseTimeoutMs=600), args=["-v"])
    call_id = inbound(d)
    agent = Events(d)
    try:
        d.rpc("mock.say", {"callId": call_id, "text": "what time is it?"})
        turn = agent.until("call.turn")
        assert turn["callId"] == call_id
        assert turn["data"] == {"speaker": "user", "text": "what time is it?", "transcripts": ["what time is it?"],
                                "awaitingReply": True, "timeoutMs": 600}
        assert turn["call"]["from"] == CALLER and lines(turn["call"])[-1] == ("user", "what time is it?")
        d.rpc("voicecall.speak", {"callId": call_id, "message": "It is noon."})
        wait_lines(d, call_id, 3)
        # The agent's speech counted as the answer: the turn ends without an apology.
        wait_log(d, f"call {call_id}: turn answered in")
        assert len(d.rpc("voicecall.status", {"callId": call_id})["transcript"]) == 3
        # Turn two: nobody answers, so the caller hears the apology.
        d.rpc("mock.say", {"callId": call_id, "text": "hello?"})
        assert agent.until("call.turn")["data"]["text"] == "hello?"
        record = wait_lines(d, call_id, 5)
        assert lines(record) == [("bot", GREETING), ("user", "what time is it?"), ("bot", "It is noon."),
                                 ("user", "hello?"), ("bot", APOLOGY)]
        d.wait_state(call_id, "listening")
        assert fake.chat_requests == []
    finally:
        agent.close()


def test_sighup_switches_the_responder(start_daemon, fake) -> None:
    fake.chat_replies.put("From the LLM.")
    d = start_daemon(llm_config(fake, maxDurationSeconds=60), args=["-v"])
    call_id = inbound(d)
    assert lines(say_and_wait(d, call_id, "hi"))[-1] == ("bot", "From the LLM.")
    d.write_config(merge(d.config, {"responder": "off"}))
    after = len(d.notify.lines())
    d.signal(signal.SIGHUP)
    d.notify.wait_for("READY=1", after=after)
    d.rpc("mock.say", {"callId": call_id, "text": "anyone?"})
    wait_lines(d, call_id, 4)
    wait_log(d, f"call {call_id}: caller turn left unanswered: the responder is off")
    assert lines(d.rpc("voicecall.status", {"callId": call_id}))[-1] == ("user", "anyone?")
    assert len(fake.chat_requests) == 1
