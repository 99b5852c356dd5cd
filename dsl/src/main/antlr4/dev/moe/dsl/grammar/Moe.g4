/*
 * The .moe language.
 *
 * The grammar fixes the structure (declarations, blocks, layer plans, expressions) and leaves the
 * vocabulary of settings to the compiler, which checks every `key value` pair against a schema and
 * suggests the nearest valid key. That keeps the grammar small and the diagnostics specific.
 *
 * Reserved words: import const ffn moe model train router layers stage domain x.
 * Soft words (usable as names): first every from rest all parallel.
 */
grammar Moe;

standaloneFile
    : topLevel* EOF
    ;

topLevel
    : IMPORT path=STRING                                               #importDeclaration
    | CONST name=identifier '=' value=expression                       #constDeclaration
    | definition                                                       #definitionDeclaration
    | MODEL name=identifier '{' modelMember* '}'                       #modelDeclaration
    | TRAIN model=identifier '{' trainMember* '}'                      #trainDeclaration
    ;

definition
    : FFN name=identifier '=' value=expression                         #ffnDefinition
    | MOE name=identifier parameterList? '{' moeMember* '}'            #moeDefinition
    ;

parameterList
    : '(' (parameter (',' parameter)*)? ')'
    ;

parameter
    : name=identifier ('=' defaultValue=expression)?
    ;

modelMember
    : definition                                                       #modelDefinition
    | LAYERS count=expression '{' layerEntry* '}'                      #layerPlan
    | setting                                                          #modelSetting
    ;

layerEntry
    : selector ':' expression (',' expression)*
    ;

selector
    : FIRST count=expression                                           #firstSelector
    | EVERY step=expression (FROM start=expression)?                   #everySelector
    | REST                                                             #restSelector
    | ALL                                                              #allSelector
    | from=selectorBound ('..' to=selectorBound)?                      #indexSelector
    ;

// A number, a constant, or a parenthesised expression: `2..(N - 1)`. Keeping calls out of selectors
// means a missing comma in `all: attention swiglu(...)` is reported where it is, not a line later.
selectorBound
    : NUMBER                                                           #numberBound
    | identifier                                                       #nameBound
    | '(' expression ')'                                               #expressionBound
    ;

moeMember
    : ROUTER name=identifier? '{' setting* '}'                         #routerBlock
    | setting                                                          #moeSetting
    ;

trainMember
    : STAGE name=identifier '{' setting* '}'                           #stageBlock
    | PARALLEL '{' setting* '}'                                        #parallelBlock
    | DOMAIN name=identifier '=' value=expression                      #domainDefinition
    | setting                                                          #trainSetting
    ;

setting
    : key=identifier value=expression
    ;

expression
    : '(' inner=expression ')'                                         #parenthesized
    | name=identifier '(' (argument (',' argument)*)? ')'              #call
    | '[' (expression (',' expression)* ','?)? ']'                     #list
    | op=('-' | '+') operand=expression                                #unary
    | left=expression op=('*' | '/') right=expression                  #multiplicative
    | left=expression op=('+' | '-') right=expression                  #additive
    | count=expression X spec=expression                               #repeat
    | NUMBER                                                           #number
    | STRING                                                           #string
    | identifier                                                       #reference
    ;

argument
    : (name=argumentName ':')? value=expression
    ;

// Argument names may be reserved words: copy(model: Dense, from: "dense.safetensors").
argumentName
    : identifier
    | IMPORT | CONST | FFN | MOE | MODEL | TRAIN | ROUTER | LAYERS | STAGE | DOMAIN
    ;

identifier
    : IDENTIFIER
    | FIRST | EVERY | FROM | REST | ALL | PARALLEL
    ;

IMPORT : 'import' ;
CONST  : 'const' ;
FFN    : 'ffn' ;
MOE    : 'moe' ;
MODEL  : 'model' ;
TRAIN  : 'train' ;
ROUTER : 'router' ;
LAYERS : 'layers' ;
STAGE  : 'stage' ;
DOMAIN : 'domain' ;
X      : 'x' ;
FIRST  : 'first' ;
EVERY  : 'every' ;
FROM   : 'from' ;
REST   : 'rest' ;
ALL    : 'all' ;
// A soft word: the train block's `parallel { ... }`, and still the layer form `parallel(mixer, ffn)`.
PARALLEL : 'parallel' ;

LBRACE   : '{' ;
RBRACE   : '}' ;
LPAREN   : '(' ;
RPAREN   : ')' ;
LBRACKET : '[' ;
RBRACKET : ']' ;
COMMA    : ',' ;
COLON    : ':' ;
EQUALS   : '=' ;
DOTDOT   : '..' ;
PLUS     : '+' ;
MINUS    : '-' ;
STAR     : '*' ;
SLASH    : '/' ;

// 3, 10_000, 0.5, 1e-6, 2.5E+3. A leading digit is required so that `0..5` lexes as a range.
NUMBER
    : DIGITS ('.' DIGITS)? EXPONENT?
    ;

IDENTIFIER
    : [a-zA-Z_] [a-zA-Z_0-9]*
    ;

STRING
    : '"' (~["\\\r\n] | '\\' ["\\nt])* '"'
    ;

// Recognised so that the parser facade can report them precisely instead of as stray characters.
UNTERMINATED_STRING
    : '"' (~["\\\r\n] | '\\' ~[\r\n])*
    ;

BAD_ESCAPE_STRING
    : '"' (~["\\\r\n] | '\\' ~[\r\n])* '"'
    ;

LINE_COMMENT
    : '//' ~[\r\n]* -> channel(HIDDEN)
    ;

BLOCK_COMMENT
    : '/*' .*? ('*/' | EOF) -> channel(HIDDEN)
    ;

WS
    : [ \t\r\n\f]+ -> skip
    ;

// Anything else: reported by the facade as an invalid character.
INVALID_CHARACTER
    : .
    ;

fragment DIGITS
    : [0-9] ('_'? [0-9])*
    ;

fragment EXPONENT
    : [eE] [+-]? DIGITS
    ;
