%% The Erlang side of the `call` comparison: one client, a trivial gen_server that echoes,
%% best of 5 runs of 100 000 `gen_server:call`s; prints ns per call. Run from the crate's root:
%%   erlc -o /tmp benches/erlang/call_bench.erl && erl -noshell -pa /tmp -s call_bench main -s init stop
-module(call_bench).
-behaviour(gen_server).
-export([main/0, init/1, handle_call/3, handle_cast/2]).

-define(CALLS, 100000).
-define(TRIES, 5).

init([]) -> {ok, nostate}.
handle_call(X, _From, State) -> {reply, X, State}.
handle_cast(_X, State) -> {noreply, State}.

loop(_Pid, 0) -> ok;
loop(Pid, N) -> N = gen_server:call(Pid, N), loop(Pid, N - 1).

main() ->
    {ok, Pid} = gen_server:start_link(?MODULE, [], []),
    loop(Pid, 10000),
    Times = [begin
                 {Micros, ok} = timer:tc(fun() -> loop(Pid, ?CALLS) end),
                 Micros * 1000 / ?CALLS
             end || _ <- lists:seq(1, ?TRIES)],
    io:format("erlang/otp ~s gen_server:call, one client: best ~.1f ns per call (runs: ~w)~n",
              [erlang:system_info(otp_release), lists:min(Times),
               [round(T) || T <- Times]]).
