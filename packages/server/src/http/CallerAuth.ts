import {
  AccessDenied,
  Authentication,
  AuthenticationRequired,
  authModeConfig,
  Caller,
  CheckpointFailed,
  Cluster
} from "@checkpointer/core"
import type { Access } from "@checkpointer/core"
import { HttpApp, HttpServerResponse } from "@effect/platform"
import { Effect, Layer, Option, Redacted } from "effect"

const describe = (access: Access) =>
  `${access.verb} ${access.resource}${access.subresource === undefined ? "" : `/${access.subresource}`} ${
    access.namespace === undefined ? "in all namespaces" : `in namespace ${access.namespace}`
  }`

/** The API server could not be asked; the request is refused, never let through. */
const unavailable = (error: { readonly message: string }) =>
  new CheckpointFailed({ message: `cannot check the caller: ${error.message}` })

const anyone = Caller.of({ authorize: () => Effect.void })

/** 401, telling the caller how to authenticate. */
const unauthenticated = (message: string) =>
  HttpApp.appendPreResponseHandler((_request, response) =>
    Effect.succeed(HttpServerResponse.setHeader(response, "www-authenticate", "Bearer"))
  ).pipe(Effect.zipRight(Effect.fail(new AuthenticationRequired({ message }))))

/**
 * Caller authentication with AUTH_MODE=kubernetes: the bearer token is checked with a TokenReview and each access
 * with a SubjectAccessReview. With AUTH_MODE=none every caller may do everything.
 */
export const CallerAuth = Layer.effect(
  Authentication,
  Effect.gen(function*() {
    const authMode = yield* authModeConfig
    const cluster = yield* Cluster
    if (authMode === "none") {
      yield* Effect.logWarning(
        "AUTH_MODE=none: any caller that reaches this service may checkpoint any container (and so read its memory)"
      )
      return Authentication.of({ bearer: () => Effect.succeed(anyone) })
    }
    return Authentication.of({
      bearer: Effect.fn("CallerAuth.authenticate")(function*(bearer: Redacted.Redacted<string>) {
        const token = Redacted.value(bearer).trim()
        if (token === "") return yield* unauthenticated("a bearer token is required")
        const user = yield* cluster.reviewToken(token).pipe(Effect.mapError(unavailable))
        if (Option.isNone(user)) return yield* unauthenticated("the bearer token is not valid")
        const authorize = Effect.fn("CallerAuth.authorize")(function*(accesses: ReadonlyArray<Access>) {
          for (const access of accesses) {
            const allowed = yield* cluster.reviewAccess(user.value, {
              verb: access.verb,
              resource: access.resource,
              ...(access.subresource === undefined ? {} : { subresource: access.subresource }),
              ...(access.namespace === undefined ? {} : { namespace: access.namespace })
            }).pipe(Effect.mapError(unavailable))
            if (!allowed) {
              return yield* new AccessDenied({
                message: `${user.value.username ?? "the caller"} may not ${describe(access)}`
              })
            }
          }
        })
        return Caller.of({ authorize })
      })
    })
  })
)
