/** A readable reason for a failure, for messages: never a stack, never the whole object. */

const isSystemError = (
  cause: unknown
): cause is { readonly _tag: "SystemError"; readonly reason: string; readonly description?: string | undefined } =>
  typeof cause === "object" && cause !== null && "_tag" in cause && cause._tag === "SystemError" && "reason" in cause

/** The reason of any failure: a platform error's reason (`NotFound: ...`), an error's message, or the value itself. */
export const reasonOf = (cause: unknown): string => {
  if (isSystemError(cause)) {
    return cause.description === undefined ? cause.reason : `${cause.reason}: ${cause.description}`
  }
  if (cause instanceof Error) return cause.message
  if (typeof cause === "object" && cause !== null && "message" in cause) return String(cause.message)
  return String(cause)
}

const nextCause = (cause: unknown): unknown =>
  typeof cause === "object" && cause !== null && "cause" in cause ? cause.cause : undefined

/**
 * The network or TLS reason under an HTTP client error: the innermost cause's message and code
 * (`self-signed certificate in certificate chain (SELF_SIGNED_CERT_IN_CHAIN)`), or the error's own reason.
 */
export const transportReason = (error: unknown): string => {
  let current = error
  for (let depth = 0; depth < 5 && nextCause(current) instanceof Error; depth++) current = nextCause(current)
  if (current === error) return reasonOf(error)
  const code = typeof current === "object" && current !== null && "code" in current && typeof current.code === "string"
    ? ` (${current.code})`
    : ""
  return `${reasonOf(current)}${code}`
}
