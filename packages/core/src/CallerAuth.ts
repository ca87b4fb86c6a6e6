import { Data, Effect, Option } from "effect"
import { Cluster } from "./Cluster.ts"
import { authModeConfig } from "./Config.ts"

/** What a caller wants to do, as a SubjectAccessReview puts it. */
export interface Access {
  readonly verb: string
  readonly resource: string
  readonly subresource?: string
  /** Omitted: in every namespace. */
  readonly namespace?: string
}

/** No bearer token, or one the API server does not accept (401). */
export class Unauthenticated extends Data.TaggedError("Unauthenticated")<{ readonly message: string }> {}

/** The caller is known but may not do this (403). */
export class Forbidden extends Data.TaggedError("Forbidden")<{ readonly message: string }> {}

/** The API server could not be asked (500); the request is refused, never let through. */
export class AuthUnavailable extends Data.TaggedError("AuthUnavailable")<{ readonly message: string }> {}

const describe = (access: Access) =>
  `${access.verb} ${access.resource}${access.subresource === undefined ? "" : `/${access.subresource}`} ${
    access.namespace === undefined ? "in all namespaces" : `in namespace ${access.namespace}`
  }`

const bearer = (authorization: string | undefined): Option.Option<string> => {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "")
  return Option.fromNullable(match?.[1])
}

/**
 * Caller authentication with AUTH_MODE=kubernetes: the bearer token is checked with a TokenReview and each access
 * with a SubjectAccessReview. With AUTH_MODE=none (the seed's behaviour) every caller may do everything.
 */
export class CallerAuth extends Effect.Service<CallerAuth>()("checkpointer/CallerAuth", {
  effect: Effect.gen(function*() {
    const authMode = yield* authModeConfig
    const cluster = yield* Cluster
    if (authMode === "none") {
      yield* Effect.logWarning(
        "AUTH_MODE=none: any caller that reaches this service may checkpoint any container (and so read its memory)"
      )
    }
    const unavailable = (error: { readonly message: string }) =>
      new AuthUnavailable({ message: `cannot check the caller: ${error.message}` })

    const authorize = Effect.fn("CallerAuth.authorize")(function*(
      authorization: string | undefined,
      accesses: ReadonlyArray<Access>
    ) {
      if (authMode === "none") return
      const token = bearer(authorization)
      if (Option.isNone(token)) return yield* new Unauthenticated({ message: "a bearer token is required" })
      const user = yield* cluster.reviewToken(token.value).pipe(Effect.mapError(unavailable))
      if (Option.isNone(user)) return yield* new Unauthenticated({ message: "the bearer token is not valid" })
      for (const access of accesses) {
        const allowed = yield* cluster.reviewAccess(user.value, {
          verb: access.verb,
          resource: access.resource,
          ...(access.subresource === undefined ? {} : { subresource: access.subresource }),
          ...(access.namespace === undefined ? {} : { namespace: access.namespace })
        }).pipe(Effect.mapError(unavailable))
        if (!allowed) {
          return yield* new Forbidden({
            message: `${user.value.username ?? "the caller"} may not ${describe(access)}`
          })
        }
      }
    })

    return { enabled: authMode === "kubernetes", authorize } as const
  })
}) {}
