import {
  CheckpointerApi,
  CheckpointIdentifier,
  CheckpointResult,
  ContainerPath,
  RestoreRequest,
  RestoreResult,
  transportReason
} from "@checkpointer/core"
import type { AsyncCheckpointAccepted } from "@checkpointer/core"
import { CheckpointOptions as CheckpointBody } from "@checkpointer/core"
import { HttpApiClient, HttpClient, HttpClientRequest } from "@effect/platform"
import type { HttpClientError } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Data, Duration, Effect, Layer, Redacted, Schedule, Schema } from "effect"
import type { ParseResult } from "effect"

/** The request did not get an answer the contract describes: unreachable server, unexpected status, bad input. */
export class CheckpointerRequestFailed extends Data.TaggedError("CheckpointerRequestFailed")<{
  /** The HTTP status, when there was an answer. */
  readonly status: number | undefined
  readonly message: string
  readonly cause?: unknown
}> {}

export interface ContainerInput {
  readonly namespace: string
  readonly pod: string
  readonly container: string
}

export interface CheckpointOptions {
  /** Delete the pod after its image is pushed. */
  readonly deletePod?: boolean
}

/** What to restore (exactly one of `checkpointIdentifier` and `image`), and where. */
export interface RestoreInput {
  readonly checkpointIdentifier?: string
  readonly image?: string
  /** Default: the checkpointed pod's namespace. */
  readonly namespace?: string
  /** Default: `<original>-restored-<hex>`. */
  readonly pod?: string
  /** Default: the scheduler decides. */
  readonly node?: string
  /** Keep the pod when its restore fails (default: deleted). */
  readonly keepFailedPod?: boolean
}

export interface WaitOptions {
  /** Give up after this long (default 30 minutes). */
  readonly timeout?: Duration.DurationInput
  /** Called every second while the checkpoint is still running, with the time waited so far. */
  readonly onWaiting?: (waited: Duration.Duration) => Effect.Effect<void>
}

const describeClientError = (error: HttpClientError.HttpClientError | ParseResult.ParseError) =>
  Effect.gen(function*() {
    if (error._tag === "ParseError") {
      return new CheckpointerRequestFailed({
        status: undefined,
        message: `not allowed by the API contract: ${error.message}`,
        cause: error
      })
    }
    if (error._tag === "RequestError") {
      const cause = error.cause === undefined ? "" : `: ${transportReason(error.cause)}`
      return new CheckpointerRequestFailed({
        status: undefined,
        message: `no answer from ${error.request.url}${cause}`,
        cause: error
      })
    }
    const body = yield* error.response.text.pipe(Effect.orElseSucceed(() => ""))
    return new CheckpointerRequestFailed({
      status: error.response.status,
      message: body.trim() === "" ? `${error.response.status} from ${error.request.url}` : body.trim(),
      cause: error
    })
  })

/** Worth asking again: no answer, a peer Checkpointer that could not be reached (502), one shutting down (503). */
const isTransient = (error: { readonly _tag: string; readonly status?: number | undefined }) =>
  error._tag === "PeerUnreachable" ||
  (error._tag === "CheckpointerRequestFailed" && [undefined, 502, 503].includes(error.status))

const retryTransient = Schedule.exponential("250 millis").pipe(Schedule.upTo("5 seconds"))

export interface ClientOptions {
  /** Where Checkpointer answers, e.g. `http://checkpoint-service.checkpointer` inside the cluster. */
  readonly baseUrl?: string | URL
  /** Sent as `Authorization: Bearer ...`: a Kubernetes token, which Checkpointer checks with AUTH_MODE=kubernetes. */
  readonly token?: string | Redacted.Redacted<string>
}

export interface TlsOptions {
  /** PEM of the CA that signed Checkpointer's certificate (an https `baseUrl`); default: the system's CAs. */
  readonly ca?: string
  /** The name Checkpointer's certificate is checked against, when it is not the host of `baseUrl`. */
  readonly serverName?: string
}

const decodeContainer = Schema.decodeUnknown(ContainerPath)
const decodeRestoreRequest = Schema.decodeUnknown(RestoreRequest)
const decodeIdentifier = Schema.decodeUnknown(CheckpointIdentifier)

const failOutsideContract = (error: HttpClientError.HttpClientError | ParseResult.ParseError) =>
  Effect.flatMap(describeClientError(error), Effect.fail)

/** Everything outside the contract becomes CheckpointerRequestFailed; the contract's errors stay as they are. */
const outsideContract = {
  RequestError: failOutsideContract,
  ResponseError: failOutsideContract,
  ParseError: failOutsideContract
}

const make = (options: ClientOptions) =>
  Effect.gen(function*() {
    const token = options.token
    const api = yield* HttpApiClient.make(CheckpointerApi, {
      ...(options.baseUrl === undefined ? {} : { baseUrl: options.baseUrl }),
      ...(token === undefined ? {} : {
        transformClient: HttpClient.mapRequest(
          HttpClientRequest.bearerToken(Redacted.isRedacted(token) ? token : Redacted.make(token))
        )
      })
    })

    const post = (container: ContainerInput, payload: CheckpointOptions & { readonly async?: boolean }) =>
      decodeContainer(container).pipe(
        Effect.flatMap((path) =>
          api.checkpoint.checkpoint({
            path,
            payload: new CheckpointBody({ deletePod: payload.deletePod ?? false, async: payload.async ?? false })
          })
        ),
        Effect.catchTags(outsideContract),
        Effect.withSpan("CheckpointerClient.checkpoint")
      )

    type CheckpointFailure = Effect.Effect.Error<ReturnType<typeof post>>
    /** `checkpoint(container)` answers the result; `checkpoint(container, { async: true })` answers the identifier. */
    function checkpoint(
      container: ContainerInput,
      options: CheckpointOptions & { readonly async: true }
    ): Effect.Effect<AsyncCheckpointAccepted, CheckpointFailure>
    function checkpoint(
      container: ContainerInput,
      options?: CheckpointOptions & { readonly async?: false }
    ): Effect.Effect<CheckpointResult, CheckpointFailure>
    function checkpoint(container: ContainerInput, options: CheckpointOptions & { readonly async?: boolean } = {}) {
      return post(container, options)
    }

    const result = Effect.fn("CheckpointerClient.result")(function*(identifier: string) {
      return yield* decodeIdentifier(identifier).pipe(
        Effect.flatMap((checkpointIdentifier) => api.checkpoint.result({ urlParams: { checkpointIdentifier } })),
        Effect.catchTags(outsideContract)
      )
    })

    const postRestore = (input: RestoreInput & { readonly async?: boolean }) =>
      decodeRestoreRequest(input).pipe(
        Effect.flatMap((payload) => api.checkpoint.restore({ payload })),
        Effect.catchTags(outsideContract),
        Effect.withSpan("CheckpointerClient.restore")
      )

    type RestoreFailure = Effect.Effect.Error<ReturnType<typeof postRestore>>
    /** `restore(input)` answers the running pod; `restore(input, { async: true })` answers an identifier. */
    function restore(
      input: RestoreInput,
      options: { readonly async: true }
    ): Effect.Effect<AsyncCheckpointAccepted, RestoreFailure>
    function restore(
      input: RestoreInput,
      options?: { readonly async?: false }
    ): Effect.Effect<RestoreResult, RestoreFailure>
    function restore(input: RestoreInput, options: { readonly async?: boolean } = {}) {
      return postRestore({ ...input, async: options.async ?? false })
    }

    const awaitResult = Effect.fn("CheckpointerClient.awaitResult")(function*(
      identifier: string,
      options?: WaitOptions
    ) {
      const timeout = Duration.decode(options?.timeout ?? Duration.minutes(30))
      const waiting = options?.onWaiting === undefined
        ? Effect.never
        : Effect.gen(function*() {
          const start = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
          const onWaiting = options.onWaiting!
          return yield* Effect.clockWith((clock) => clock.currentTimeMillis).pipe(
            Effect.flatMap((now) => onWaiting(Duration.millis(now - start))),
            Effect.repeat(Schedule.spaced("1 second")),
            Effect.zipRight(Effect.never)
          )
        })
      return yield* result(identifier).pipe(
        Effect.retry({ schedule: retryTransient, while: isTransient }),
        Effect.raceFirst(waiting),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new CheckpointerRequestFailed({
              status: undefined,
              message: `${identifier} had no result within ${Duration.format(timeout)}`
            })
        })
      )
    })

    /** The result of an async call once it is done, if it is a `kind` (else CheckpointerRequestFailed). */
    const awaitKind = <A extends CheckpointResult | RestoreResult>(
      kind: new(...args: ReadonlyArray<never>) => A,
      what: string
    ) =>
    (identifier: string, options?: WaitOptions) =>
      awaitResult(identifier, options).pipe(
        Effect.flatMap((answer) =>
          answer instanceof kind
            ? Effect.succeed(answer as A)
            : Effect.fail(new CheckpointerRequestFailed({ status: 200, message: `${identifier} is not a ${what}` }))
        )
      )

    /** Waits (retrying while unreachable) for the result of an async checkpoint. */
    const waitFor = awaitKind(CheckpointResult, "checkpoint")
    /** Waits (retrying while unreachable) for the result of an async restore. */
    const waitForRestore = awaitKind(RestoreResult, "restore")

    return { checkpoint, restore, result, waitFor, waitForRestore } as const
  })

/**
 * A typed client of the Checkpointer HTTP API, derived from its contract (`CheckpointerApi`). Failures are the
 * contract's errors (`ContainerNotFound`, `CheckpointFailed`, `CheckpointNotFound`, `InvalidRequest`, ...) or
 * `CheckpointerRequestFailed` for anything outside it (no answer, unexpected status, invalid names).
 */
export class CheckpointerClient extends Context.Tag("checkpointer/CheckpointerClient")<
  CheckpointerClient,
  Effect.Effect.Success<ReturnType<typeof make>>
>() {
  /** The client over an `HttpClient` you provide (e.g. `FetchHttpClient.layer`). */
  static readonly make = make

  /** The client over an `HttpClient` you provide. */
  static readonly layerWithoutHttpClient = (options: ClientOptions) => Layer.effect(CheckpointerClient, make(options))

  /**
   * The client over Node's HTTP client, which waits as long as a synchronous checkpoint takes. An https `baseUrl`
   * is verified with `ca` (else the system's CAs) against `serverName` (else the URL's host).
   */
  static readonly layer = (options: ClientOptions & TlsOptions & { readonly baseUrl: string | URL }) =>
    CheckpointerClient.layerWithoutHttpClient(options).pipe(
      Layer.provide(NodeHttpClient.layerWithoutAgent),
      Layer.provide(NodeHttpClient.makeAgentLayer({
        ...(options.ca === undefined ? {} : { ca: options.ca }),
        ...(options.serverName === undefined ? {} : { servername: options.serverName })
      }))
    )
}
