import { Effect, Ref } from "effect"
import type { IncomingMessage } from "node:http"
import { asRecord, readJson } from "./RequestBody.ts"
import type { Route } from "./Router.ts"
import { reply } from "./Router.ts"

/** A caller known to the TokenReview, allowed what `allow` lists (SubjectAccessReview); `namespace` omitted = all. */
export interface ApiUser {
  readonly token: string
  readonly username: string
  readonly allow: ReadonlyArray<
    { readonly verb: string; readonly resource: string; readonly subresource?: string; readonly namespace?: string }
  >
}

/** TokenReview and SubjectAccessReview, answered from the users added to the harness. */
export const makeReviews = Effect.gen(function*() {
  const users = yield* Ref.make<ReadonlyArray<ApiUser>>([])

  const reviewToken = (request: IncomingMessage) =>
    Effect.gen(function*() {
      const spec = asRecord((yield* readJson(request))["spec"])
      const user = (yield* Ref.get(users)).find((candidate) => candidate.token === spec["token"])
      return {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenReview",
        status: user === undefined
          ? { authenticated: false, error: "token not recognized" }
          : {
            authenticated: true,
            user: { username: user.username, uid: user.username, groups: ["system:authenticated"] }
          }
      }
    })

  const reviewAccess = (request: IncomingMessage) =>
    Effect.gen(function*() {
      const spec = asRecord((yield* readJson(request))["spec"])
      const wanted = asRecord(spec["resourceAttributes"])
      const user = (yield* Ref.get(users)).find((candidate) => candidate.username === spec["user"])
      const allowed = user?.allow.some((rule) =>
        rule.verb === wanted["verb"] && rule.resource === wanted["resource"] &&
        (rule.subresource ?? "") === (wanted["subresource"] ?? "") &&
        (rule.namespace === undefined || rule.namespace === wanted["namespace"])
      ) ?? false
      return { apiVersion: "authorization.k8s.io/v1", kind: "SubjectAccessReview", status: { allowed } }
    })

  const routes: ReadonlyArray<Route> = [
    {
      path: "apis/authentication.k8s.io/v1/tokenreviews",
      methods: { POST: ({ incoming }) => Effect.map(reviewToken(incoming), reply(201)) }
    },
    {
      path: "apis/authorization.k8s.io/v1/subjectaccessreviews",
      methods: { POST: ({ incoming }) => Effect.map(reviewAccess(incoming), reply(201)) }
    }
  ]

  return { addUser: (user: ApiUser) => Ref.update(users, (all) => [...all, user]), routes } as const
})
